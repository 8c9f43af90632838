"""Fetch the public data sets of ``bench.real_data`` from their publishers' repositories.

    python -m bench.fetch_real_data [--dest bench/data]

The data files are not part of this repository (they are third-party data, each with its
own licence: see ``bench/data/<name>/SOURCE.md``). This downloads the original files at the
commits the evaluation was made with, unpacks them into a temporary folder and writes the
excerpts ``bench.eval_real`` reads (``bench.real_data.make_excerpts``). It needs network
access to github.com.
"""

from __future__ import annotations

import argparse
import io
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

OCCUPANCY = "https://raw.githubusercontent.com/LuisM78/Occupancy-detection-data/ba2b1d7b53a71292ff61b867d3e16f0e539c7eb6"
MUNICH = "https://raw.githubusercontent.com/imcs-compsim/munich-bridge-data/f1057c128065d7ded49e59768091b5534fdf801e/Settlements"
_TIMEOUT_S = 120


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
        data: bytes = response.read()
    return data


def _unzip(blob: bytes, into: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        for member in z.namelist():
            if member.endswith("/"):
                continue
            (into / Path(member).name).write_bytes(z.read(member))


def fetch(dest: Path) -> list[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        occupancy = Path(tmp) / "occupancy"
        strain = Path(tmp) / "munich" / "strain"
        temperature = Path(tmp) / "munich" / "temperature"
        for folder in (occupancy, strain, temperature):
            folder.mkdir(parents=True)
        for name in OCCUPANCY_FILES:
            (occupancy / name).write_bytes(_get(f"{OCCUPANCY}/{name}"))
        for segment, _, kind in MUNICH_SEGMENTS:
            sub = "Lowering/" if kind == "settlement" else ""
            name = strain_file(segment, rate="100hz")
            _unzip(_get(f"{MUNICH}/{sub}{name}.zip"), strain)
        _unzip(_get(f"{MUNICH}/TemperatureData2022-04-11.zip"), temperature)
        return make_excerpts(occupancy, strain.parent, dest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fetch_real_data", description=__doc__)
    parser.add_argument("--dest", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    for path in fetch(args.dest):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
