"""Fetch the public data sets of ``bench.real_data`` from their publishers' repositories.

    python -m bench.fetch_real_data [--dest bench/data] [--occupancy-git DIR --munich-git DIR]

The data files are not part of this repository (they are third-party data, each with its
own licence: see ``bench/data/<name>/SOURCE.md``). This downloads the original files at the
commits the evaluation was made with, unpacks them into a temporary folder and writes the
excerpts ``bench.eval_real`` reads (``bench.real_data.make_excerpts``). It needs network
access to github.com, or local clones of the two repositories (``--occupancy-git``,
``--munich-git``: their git directories, holding the same commits).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

from bench.real_data import (
    DATA_DIR,
    MUNICH_SEGMENTS,
    OCCUPANCY_FILES,
    make_excerpts,
    strain_file,
)

OCCUPANCY_COMMIT = "ba2b1d7b53a71292ff61b867d3e16f0e539c7eb6"
MUNICH_COMMIT = "f1057c128065d7ded49e59768091b5534fdf801e"
OCCUPANCY = f"https://raw.githubusercontent.com/LuisM78/Occupancy-detection-data/{OCCUPANCY_COMMIT}"
MUNICH = f"https://raw.githubusercontent.com/imcs-compsim/munich-bridge-data/{MUNICH_COMMIT}"
_TIMEOUT_S = 120


class Source:
    """Files of one repository at one commit: over HTTPS, or from a local git directory."""

    def __init__(self, url: str, commit: str, git_dir: Path | None = None) -> None:
        self.url, self.commit, self.git_dir = url, commit, git_dir

    def get(self, path: str) -> bytes:
        if self.git_dir is None:
            with urllib.request.urlopen(f"{self.url}/{path}", timeout=_TIMEOUT_S) as response:
                data: bytes = response.read()
            return data
        return subprocess.run(
            ["git", "--git-dir", str(self.git_dir), "show", f"{self.commit}:{path}"],
            check=True,
            capture_output=True,
        ).stdout


def _unzip(blob: bytes, into: Path) -> None:
    """Unpack the files of a zip archive flat into ``into``. Some copies of the bridge data
    name the CSV inside an archive ``*.csv.zip``: a member that is no archive loses that
    suffix, one that is an archive is unpacked in turn."""
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        for member in z.namelist():
            if member.endswith("/"):
                continue
            data = z.read(member)
            name = Path(member).name
            if name.endswith(".zip"):
                if zipfile.is_zipfile(io.BytesIO(data)):
                    _unzip(data, into)
                    continue
                name = name.removesuffix(".zip")
            (into / name).write_bytes(data)


def fetch(
    dest: Path, occupancy_git: Path | None = None, munich_git: Path | None = None
) -> list[Path]:
    occupancy_src = Source(OCCUPANCY, OCCUPANCY_COMMIT, occupancy_git)
    munich_src = Source(MUNICH, MUNICH_COMMIT, munich_git)
    with tempfile.TemporaryDirectory() as tmp:
        occupancy = Path(tmp) / "occupancy"
        strain = Path(tmp) / "munich" / "strain"
        temperature = Path(tmp) / "munich" / "temperature"
        for folder in (occupancy, strain, temperature):
            folder.mkdir(parents=True)
        for name in OCCUPANCY_FILES:
            (occupancy / name).write_bytes(occupancy_src.get(name))
        for segment, _, kind in MUNICH_SEGMENTS:
            sub = "Lowering/" if kind == "settlement" else ""
            name = strain_file(segment, rate="100hz")
            _unzip(munich_src.get(f"Settlements/{sub}{name}.zip"), strain)
        _unzip(munich_src.get("Settlements/TemperatureData2022-04-11.zip"), temperature)
        return make_excerpts(occupancy, strain.parent, dest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fetch_real_data", description=__doc__)
    parser.add_argument("--dest", type=Path, default=DATA_DIR)
    parser.add_argument("--occupancy-git", type=Path, help="git directory of a local clone")
    parser.add_argument("--munich-git", type=Path, help="git directory of a local clone")
    args = parser.parse_args(argv)
    for path in fetch(args.dest, args.occupancy_git, args.munich_git):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
