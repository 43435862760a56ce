"""Regenerates the Python gRPC code from proto/ into custody/v1 (and later hsm/v1).

Generated packages hold nothing hand-written: delete and regenerate freely.
Run: python scripts/gen_proto.py          (regenerate)
     python scripts/gen_proto.py --check  (fail if the committed code is stale)
"""
import pathlib
import sys
import tempfile

from grpc_tools import protoc
import grpc_tools

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
GENERATED_NOTE = '"""Generated from proto/ by scripts/gen_proto.py. Do not edit."""\n'


def generate(out: pathlib.Path) -> list[str]:
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = []
    for package_dir in sorted({(out / f).parent for f in files}):
        (package_dir / "__init__.py").write_text(GENERATED_NOTE)
        generated += [str(p.relative_to(out)) for p in sorted(package_dir.iterdir()) if p.is_file()]
    return generated


def main() -> int:
    if "--check" not in sys.argv[1:]:
        print(f"generated {len(generate(ROOT))} files")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [name for name in generate(pathlib.Path(tmp))
                 if not (ROOT / name).exists() or (ROOT / name).read_bytes() != (pathlib.Path(tmp) / name).read_bytes()]
    if stale:
        print("generated code is stale; run `make proto`: " + ", ".join(stale), file=sys.stderr)
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
