"""Regenerates the Python gRPC code from proto/ into custody/v1 (and later hsm/v1).

Generated packages hold nothing hand-written: delete and regenerate freely.
Run: python scripts/gen_proto.py
"""
import pathlib
import sys

from grpc_tools import protoc
import grpc_tools

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
GENERATED_NOTE = '"""Generated from proto/ by scripts/gen_proto.py. Do not edit."""\n'


def main() -> int:
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *files,
    ]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    for package_dir in {(ROOT / f).parent for f in files}:
        (package_dir / "__init__.py").write_text(GENERATED_NOTE)
    print(f"generated {len(files)} proto files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
