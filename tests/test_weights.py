"""Weight files in every format found in the wild, downloads with hash checks, and bad files."""
import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import timm
import torch
from reference import randomize_, read_key_list

from ibnnet.commands.weights import cmd_verify, download
from ibnnet.models import Release, WeightsError, load_weights

KEYS = Path(__file__).resolve().parent / "data" / "official_keys"


@pytest.fixture(scope="module")
def trained_r18():
    """A resnet18_ibn_a with random weights and statistics, and its reference output."""
    torch.manual_seed(0)
    model = randomize_(timm.create_model("resnet18_ibn_a")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        return model, x, model(x)


def hashed_file(tmp_path: Path, stem: str, obj) -> Path:
    """Save ``obj`` and rename it torch.hub-style with its real sha256 prefix."""
    raw = tmp_path / f"{stem}.pth"
    torch.save(obj, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    return raw.rename(tmp_path / f"{stem}-{digest[:8]}.pth")


def assert_same_outputs(path, trained_r18, **kw):
    _, x, expected = trained_r18
    model = timm.create_model("resnet18_ibn_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **kw).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


def test_bare_state_dict(tmp_path, trained_r18):
    assert_same_outputs(hashed_file(tmp_path, "bare", trained_r18[0].state_dict()), trained_r18)


def test_wrapped_state_dict_with_module_prefix(tmp_path, trained_r18):
    sd = {f"module.{k}": v for k, v in trained_r18[0].state_dict().items()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet18_ibn_a", "state_dict": sd, "best_prec1": 77.4}, path)
    assert_same_outputs(path, trained_r18)


def test_oldest_files_with_instance_norm_running_stats(tmp_path, trained_r18):
    sd = dict(trained_r18[0].state_dict())
    for k in [k for k in sd if ".IN.weight" in k]:
        base = k[: -len("weight")]
        sd[base + "running_mean"] = torch.zeros(sd[k].shape)
        sd[base + "running_var"] = torch.ones(sd[k].shape)
    path = tmp_path / "old.pth"
    torch.save(sd, path)
    assert_same_outputs(path, trained_r18)


def test_lightning_checkpoint_with_model_prefix(tmp_path, trained_r18):
    sd = {f"model.{k}": v for k, v in trained_r18[0].state_dict().items()}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 12, "hyper_parameters": {"lr": 0.1}}, path)
    assert_same_outputs(path, trained_r18)


def test_official_sn_checkpoint_layout(tmp_path):
    ref = read_key_list(KEYS / "sn_keys_resnet50.txt")
    g = torch.Generator().manual_seed(0)
    sd = {f"module.{k}": torch.rand(shape, generator=g) + 0.5 for k, shape in ref.items()}
    path = tmp_path / "sn_8x32.pth"
    torch.save({"state_dict": sd, "epoch": 100}, path)
    model = timm.create_model("resnet50_sn", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.layer2[1].bn3.running_var, sd["module.layer2.1.sn3.running_var"].flatten())
    torch.testing.assert_close(model.bn1.weight, sd["module.sn1.weight"].flatten())


def test_resnet50_gn32_offers_timms_resnet50_gn_weights(tmp_path):
    theirs_cfg = timm.models.get_pretrained_cfg("resnet50_gn.a1h_in1k")
    cfg = timm.models.get_pretrained_cfg("resnet50_gn32")
    assert cfg.architecture == "resnet50_gn32" and cfg.tag == "a1h_in1k"
    assert cfg.hf_hub_id == "timm/resnet50_gn.a1h_in1k" == theirs_cfg.hf_hub_id and cfg.url == theirs_cfg.url
    assert "timm's resnet50_gn.a1h_in1k weights" in cfg.notes[-1] and not cfg.custom_load
    assert (cfg.mean, cfg.std, cfg.crop_pct, cfg.interpolation) == (
        theirs_cfg.mean, theirs_cfg.std, theirs_cfg.crop_pct, theirs_cfg.interpolation)
    # timm's own resnet50_gn (import ibnnet leaves it alone), random weights standing in for its ImageNet file;
    # through timm's loader and our checkpoint_filter_fn
    torch.manual_seed(0)
    theirs = randomize_(timm.create_model("resnet50_gn")).eval()
    ours = timm.create_model("resnet50_gn32", pretrained=True,
                             pretrained_cfg_overlay=dict(state_dict=theirs.state_dict())).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_resnet50_gn32_pretrained_reads_the_hub_file_of_timms_resnet50_gn(tmp_path, monkeypatch):
    """``pretrained=True`` fetches timm/resnet50_gn.a1h_in1k (here from an offline hub cache)."""
    hub = pytest.importorskip("huggingface_hub")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    theirs = randomize_(timm.create_model("resnet50_gn"))
    repo, commit = tmp_path / "models--timm--resnet50_gn.a1h_in1k", "0123456789" * 4
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    safetensors_torch.save_file({k: v.contiguous() for k, v in theirs.state_dict().items()},
                                str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    ours = timm.create_model("resnet50_gn32", pretrained=True, num_classes=10, in_chans=1)
    theirs_sd, ours_sd = theirs.state_dict(), ours.state_dict()
    same = [k for k in theirs_sd if not k.startswith(("fc.", "conv1.")) and torch.equal(ours_sd[k], theirs_sd[k])]
    assert len(same) == len(theirs_sd) - 3  # all but the new 10-class head and the adapted 1-channel stem
    torch.testing.assert_close(ours.conv1.weight, theirs.conv1.weight.sum(1, keepdim=True))
    assert ours.fc.out_features == 10


def test_new_head_keeps_backbone(tmp_path, trained_r18):
    path = hashed_file(tmp_path, "bare", trained_r18[0].state_dict())
    model = timm.create_model("resnet18_ibn_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              num_classes=3)
    torch.testing.assert_close(model.conv1.weight, trained_r18[0].conv1.weight)
    assert model.fc.out_features == 3


@pytest.mark.parametrize("feature_cls", ["list", "getter"])
def test_pretrained_file_with_one_channel_new_head_features_and_stride_8(tmp_path, trained_r18, feature_cls):
    # an official-format file: {'state_dict': {'module.' + key: ...}}, named with its sha256 prefix
    sd = {f"module.{k}": v for k, v in trained_r18[0].state_dict().items()}
    path = hashed_file(tmp_path, "resnet18_ibn_a", {"state_dict": sd, "epoch": 100})
    kw = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), in_chans=1, num_classes=10,
              output_stride=8)
    whole = timm.create_model("resnet18_ibn_a", **kw).eval()
    trained = trained_r18[0]
    torch.testing.assert_close(whole.conv1.weight, trained.conv1.weight.sum(1, keepdim=True))  # RGB -> grey
    torch.testing.assert_close(whole.layer4[1].bn2.running_var, trained.layer4[1].bn2.running_var)
    assert whole.fc.out_features == 10
    feats = timm.create_model("resnet18_ibn_a", features_only=True, feature_cls=feature_cls, **kw).eval()
    assert feats.feature_info.reduction() == [2, 4, 8, 8, 8]
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        expected = whole.forward_intermediates(x, intermediates_only=True)
        out = feats(x)
    assert [o.shape for o in out] == [(2, 64, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 8, 8), (2, 512, 8, 8)]
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_hash_mismatch_names_file(tmp_path, trained_r18):
    path = hashed_file(tmp_path, "bare", trained_r18[0].state_dict())
    bad = path.with_name("resnet18_ibn_a-deadbeef.pth")
    path.rename(bad)
    with pytest.raises(WeightsError, match=r"resnet18_ibn_a-deadbeef\.pth: sha256 .* does not match .*deadbeef"):
        timm.create_model("resnet18_ibn_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(bad)))


def test_truncated_file_names_file(tmp_path, trained_r18):
    path = tmp_path / "cut.pth"
    torch.save(trained_r18[0].state_dict(), path)
    path.write_bytes(path.read_bytes()[: 50_000])
    with pytest.raises(WeightsError, match=r"cut\.pth: not a readable PyTorch checkpoint"):
        load_weights(timm.create_model("resnet18_ibn_a"), path)


def test_other_architecture_names_first_mismatching_keys(tmp_path):
    path = tmp_path / "r18b.pth"
    torch.save(timm.create_model("resnet18_ibn_b").state_dict(), path)
    with pytest.raises(WeightsError) as err:
        timm.create_model("resnet18_ibn_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    msg = str(err.value)
    assert "r18b.pth: does not fit resnet18_ibn_a: missing: bn1.running_mean" in msg
    assert "unexpected: layer1.0.bn1.weight" in msg and "(+" in msg  # the first few, then a count


def test_code_in_a_checkpoint_is_never_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": Payload()}, path)
    with pytest.raises(WeightsError, match="evil.pth: refused to load"):
        load_weights(timm.create_model("resnet18_ibn_a"), path)
    assert not (tmp_path / "pwned").exists()


@pytest.fixture()
def http_server(tmp_path):
    """A local HTTP server standing in for the GitHub release host."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_verifies_hash_and_caches(tmp_path, http_server, monkeypatch, trained_r18):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    root, url = http_server
    path = hashed_file(root, "resnet18_ibn_a", trained_r18[0].state_dict())
    model = timm.create_model("resnet18_ibn_a", pretrained=True,
                              pretrained_cfg_overlay=dict(url=url + path.name)).eval()
    _, x, expected = trained_r18
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / path.name
    assert cached.is_file()
    # the CLI path: torch.hub checks the prefix while downloading
    release = Release("resnet18_ibn_a", path.name, url_base=url)
    assert download(release).read_bytes() == path.read_bytes()
    wrong = Release("resnet18_ibn_a", path.name.replace(path.name[-12:-4], "00000000"), url_base=url)
    (root / wrong.file).write_bytes(path.read_bytes())
    with pytest.raises(WeightsError, match="invalid hash value"):
        download(wrong)
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / wrong.file).exists()


def test_a_corrupt_cached_download_fails_its_check(tmp_path, http_server, monkeypatch, trained_r18):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    root, url = http_server
    path = hashed_file(root, "resnet18_ibn_a", trained_r18[0].state_dict())
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / path.name).write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="does not match"):
        timm.create_model("resnet18_ibn_a", pretrained=True, pretrained_cfg_overlay=dict(url=url + path.name))


def test_verify_command(tmp_path, capsys, trained_r18):
    path = hashed_file(tmp_path, "resnet18_ibn_a", trained_r18[0].state_dict())
    assert cmd_verify(str(path)) == 0
    out = capsys.readouterr().out
    assert "matches" in out and "fits: resnet18_ibn_a" in out
    bad = path.with_name("resnet18_ibn_a-0badbad0.pth")
    bad.write_bytes(path.read_bytes())
    assert cmd_verify(str(bad)) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_torchvision_releases_are_the_bn_baselines():
    import torchvision.models as tvm

    from ibnnet.models import RELEASES
    tv = {r.model: r for r in RELEASES if "pytorch.org" in (r.url or "")}
    assert set(tv) == {f"resnet{d}_bn" for d in (18, 34, 50, 101, 152)}
    weights = {"resnet50_bn": tvm.ResNet50_Weights.IMAGENET1K_V1, "resnet18_bn": tvm.ResNet18_Weights.IMAGENET1K_V1}
    for name, w in weights.items():
        assert tv[name].url == w.url and tv[name].top1 == w.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    theirs = randomize_(tvm.resnet18()).eval()
    ours = timm.create_model("resnet18_bn").eval()
    load_weights(ours, theirs.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_no_network_and_no_cached_file_is_one_line_saying_what_to_run(tmp_path, monkeypatch):
    """A compute node without internet: which file is missing, where it is looked up, and the command that
    fetches it on a login node; in one line (the CLI: exit 2), not a download traceback."""
    import urllib.error
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))
    monkeypatch.setattr("torch.hub.download_url_to_file", offline)
    from ibnnet.models.zoo import WeightsUnavailableError
    with pytest.raises(WeightsUnavailableError) as e:
        timm.create_model("resnet18_ibn_a", pretrained=True)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18_ibn_a-2f571257.pth"
    assert str(e.value) == (
        f"resnet18_ibn_a: pretrained weights are not at {cached} and cannot be downloaded here (URLError: "
        "[Errno -2] Name or service not known); on a machine with internet (a login node), run "
        "`ibnnet weights download resnet18_ibn_a` with the same TORCH_HOME")
    from helpers import TINY, config
    from test_cli import run_cli
    code, out, err = run_cli("train", config(tmp_path, TINY), "model.name=resnet18_ibn_a", "model.pretrained=true")
    assert code == 2 and err.strip().splitlines()[-1] == f"ibnnet: error: {e.value}", err
    assert "Traceback" not in err
