"""torch.hub entry points for every ibnnet model.

    torch.hub.load("<owner>/ibnnet", "resnet50_ibn_a", pretrained=True)

Each entry point is ``timm.create_model(name, pretrained=..., **kwargs)``: official weights are
downloaded, verified against their sha256 prefix and cached, exactly as through timm.
"""
dependencies = ["torch", "timm"]

import timm as _timm  # noqa: E402

import ibnnet as _ibnnet  # noqa: E402  (registers the models in timm)


def _entrypoint(name):
    def entry(pretrained: bool = False, **kwargs):
        return _timm.create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"{name}: {_ibnnet.models.zoo.__dict__[name].__doc__} Keyword arguments go to timm.create_model."
    return entry


for _name in _ibnnet.list_models():
    globals()[_name] = _entrypoint(_name)
