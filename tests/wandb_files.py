"""Read an offline wandb run back, as `wandb sync` would upload it: the records of its ``.wandb`` file parsed with
wandb's own protobuf schema (``wandb.proto.wandb_internal_pb2.Record``).

wandb 0.31 ships no Python reader of the file, so the framing is read here: a 7-byte file header (``:W&B``, magic
0xBEE1, version), then LevelDB log blocks of 32 KiB whose records carry a 7-byte header (CRC32C, length, type:
1 full, 2 first, 3 middle, 4 last)."""
import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1, f"{path}: not a wandb file"
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:       # the block's tail is padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:    # zero fill at the end of the file
            break
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


def read_run(run_dir: Path) -> dict:
    """``{"summary": {key: value}, "history": [{key: value}], "config": {key: value}, "run": RunRecord}`` of an
    offline run directory (values JSON-decoded; the last summary update of a key wins)."""
    (wandb_file,) = Path(run_dir).glob("*.wandb")
    summary, history, config, run = {}, [], {}, None
    for rec in records(wandb_file):
        kind = rec.WhichOneof("record_type")
        if kind == "summary":
            for item in rec.summary.update:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                summary[key] = json.loads(item.value_json)
        elif kind == "history":
            history.append({("/".join(i.nested_key) if i.nested_key else i.key): json.loads(i.value_json)
                            for i in rec.history.item})
        elif kind == "config":
            for item in rec.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "run":
            run = rec.run
    return {"summary": summary, "history": history, "config": config, "run": run}
