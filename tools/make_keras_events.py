#!/usr/bin/env python3
"""Writes tests/fixtures/logs/keras/: the TensorBoard events of a Keras `model.fit` run as the
Keras TensorBoard callback (default `update_freq="epoch"`) leaves them under TF2, for
`gptrain logs` (tests/logs.rs; the hand computation is in tests/fixtures/logs/keras.md).

    python3 -m venv /tmp/tbvenv && /tmp/tbvenv/bin/pip install tensorboard
    /tmp/tbvenv/bin/python tools/make_keras_events.py

The run folder holds `train/` and `validation/`, one events file each. Every scalar is written
as TF2's C++ summary writer writes `tf.summary.scalar` (SummaryFileWriter::WriteTensor): one
event per value, the value a rank-0 DT_FLOAT tensor in `tensor_content` (4 little-endian bytes),
metadata with plugin "scalars" on every value. `train/` gets the model's JSON as a `keras`
string tensor at step 0 (plugin `graph_keras_model`), then per epoch `epoch_loss`,
`epoch_accuracy`, `epoch_learning_rate` at the epoch's index; `validation/` gets per epoch
`evaluation_loss_vs_iterations` and `evaluation_accuracy_vs_iterations` at the optimizer's
iterations (when validation ends), then `epoch_loss`, `epoch_accuracy` at the epoch's index.
The numbers are our own; afterwards the files are read back with tensorboard's
`event_accumulator` (tensors) to check they are scalars of the scalars plugin.
"""

import struct
from pathlib import Path

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.util import tensor_util

RUN = Path(__file__).resolve().parent.parent / "tests/fixtures/logs/keras/fit/20261206-101500"
T0 = 1765016100  # the writers' creation, whole seconds (EventsWriter's first event)
STEPS_PER_EPOCH = 469  # 60,000 samples / batch 128
# each epoch's seconds: training, then validation; epoch 0 traces the tf.functions
TRAIN_S = [9.412, 3.874, 3.702, 3.671, 3.733, 3.689, 3.662, 3.708, 3.679, 3.701, 3.668, 3.721]
VAL_S = 0.41


def record(data):
    """One TFRecord: length, its masked CRC-32C, the data, its masked CRC-32C."""
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", masked_crc32c(n)) + data + struct.pack("<I", masked_crc32c(data))


def scalar(wall, step, tag, value):
    """An event as SummaryFileWriter::WriteTensor writes a float32 scalar."""
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto())
    t.tensor_content = struct.pack("<f", value)
    md = scalar_metadata.create_summary_metadata(display_name=None, description=None)
    ev = event_pb2.Event(wall_time=wall, step=step)
    ev.summary.value.add(tag=tag, tensor=t, metadata=md)
    return ev


def model_json(wall):
    """The `keras` summary: the model's JSON as a DT_STRING tensor (string_val, as WriteTensor
    stores strings)."""
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=tensor_shape_pb2.TensorShapeProto())
    t.string_val.append(b'{"class_name": "Sequential", "config": {"name": "sequential"}}')
    md = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="graph_keras_model", content=b"1"))
    ev = event_pb2.Event(wall_time=wall, step=0)
    ev.summary.value.add(tag="keras", tensor=t, metadata=md)
    return ev


def write(folder, events):
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()
    first = event_pb2.Event(wall_time=T0, file_version="brain.Event:2")
    path = folder / f"events.out.tfevents.{T0}.keras-host.4242.{0 if folder.name == 'train' else 1}.v2"
    path.write_bytes(b"".join(record(e.SerializeToString()) for e in [first, *events]))
    return path


def main():
    train, val = [model_json(T0 + 0.201337)], []
    wall = T0 + 0.35
    loss, acc = 0.412, 0.881
    for epoch, s in enumerate(TRAIN_S):
        wall += s  # training ends
        wall += VAL_S  # validation runs; on_test_end logs it at the optimizer's iterations
        its = (epoch + 1) * STEPS_PER_EPOCH
        val.append(scalar(round(wall, 6), its, "evaluation_loss_vs_iterations", loss * 0.93))
        val.append(scalar(round(wall + 0.000041, 6), its, "evaluation_accuracy_vs_iterations", acc + 0.01))
        # on_epoch_end: the training logs, then the validation's (`val_` prefix removed)
        end = wall + 0.0031
        for i, (tag, v) in enumerate([("epoch_loss", loss), ("epoch_accuracy", acc), ("epoch_learning_rate", 1e-3)]):
            train.append(scalar(round(end + i * 0.000037, 6), epoch, tag, v))
        for i, (tag, v) in enumerate([("epoch_loss", loss * 0.93), ("epoch_accuracy", acc + 0.01)]):
            val.append(scalar(round(end + 0.00015 + i * 0.000036, 6), epoch, tag, v))
        loss, acc = loss * 0.8, acc + (0.99 - acc) * 0.35
    paths = [write(RUN / "train", train), write(RUN / "validation", val)]
    for p in paths:
        acc_ = event_accumulator.EventAccumulator(str(p.parent), size_guidance={event_accumulator.TENSORS: 0})
        acc_.Reload()
        for tag in acc_.Tags()["tensors"]:
            events = acc_.Tensors(tag)
            plugin = acc_.SummaryMetadata(tag).plugin_data.plugin_name
            values = [tensor_util.make_ndarray(e.tensor_proto) for e in events]
            if plugin == "scalars":
                assert all(v.shape == () for v in values), tag
            print(f"{p.parent.name}/{tag}: plugin {plugin}, {len(events)} values, first {values[0]!r} at step {events[0].step}")
        print(p.relative_to(RUN.parent.parent.parent), p.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
