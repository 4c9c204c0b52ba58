"""The package never unpickles what a file holds: every `torch.load` passes `weights_only=True`
(torch's restricted unpickler, tensors and plain data only), the only `pickle.Unpickler` is the
allow-listed one for DCP's metadata (`train/safe_dcp.py`), and nothing calls `pickle.load(s)`,
`numpy.load(allow_pickle=True)` or asks for `trust_remote_code`.

Read from the source's syntax trees, so a call cannot hide behind a line break or a comment.
Behaviour is tested where each file is read (`tests/test_model_files.py`,
`tests/train/test_checkpoint_safety.py`, `tests/posttrain/test_dpo.py`)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "olmolab"


def calls():
    """(file, line, dotted name of the callee, its keyword arguments) of every call in the package."""
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                yield path.relative_to(SRC), node.lineno, ast.unparse(node.func), {
                    k.arg: k.value for k in node.keywords if k.arg is not None}


def is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_every_torch_load_reads_weights_only():
    loads = [(f"{path}:{line}", keywords) for path, line, name, keywords in calls() if name == "torch.load"]
    assert loads, "no torch.load found: the scan is reading the wrong tree"
    assert [place for place, keywords in loads if not is_true(keywords.get("weights_only"))] == []


def test_nothing_else_unpickles_or_runs_remote_code():
    offending = [
        f"{path}:{line} {name}"
        for path, line, name, keywords in calls()
        if name in ("pickle.load", "pickle.loads", "torch.serialization.load")
        or (name in ("np.load", "numpy.load") and is_true(keywords.get("allow_pickle")))
        or is_true(keywords.get("trust_remote_code"))
    ]
    assert offending == []


def test_the_only_unpickler_is_dcp_metadatas_allow_listed_one():
    subclasses = [
        f"{path.relative_to(SRC)}:{node.name}"
        for path in sorted(SRC.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and any(ast.unparse(base) == "pickle.Unpickler" for base in node.bases)
    ]
    assert subclasses == ["train/safe_dcp.py:_MetadataUnpickler"]
