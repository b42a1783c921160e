"""The `q1net` command: a thin layer that parses arguments and calls the API."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # LightningCLI parses its own arguments
        from q1net.train import train

        return train(argv[1:])
    parser = argparse.ArgumentParser(prog="q1net", description="JPEG quality level from pixels (Q1Net).")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="train a model (LightningCLI: fit/validate/test --config ...)")
    data = commands.add_parser("data", help="fetch data sets").add_subparsers(dest="dataset", required=True)
    div2k = data.add_parser("div2k", help="download and unpack DIV2K high-resolution PNGs")
    div2k.add_argument("--root", required=True, help="folder to fill (DIV2K_train_HR/, DIV2K_valid_HR/)")
    div2k.add_argument("--base-url", default=None, help="mirror to download from instead of the official host")
    div2k.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX", help="pin an archive's SHA-256 (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "data":
        from q1net.data.div2k import DownloadError, download_div2k

        pins = dict(pin.split("=", 1) for pin in args.sha256 if "=" in pin)
        try:
            download_div2k(args.root, base_url=args.base_url, sha256=pins)
        except DownloadError as error:
            print(f"q1net: {error}", file=sys.stderr)
            return 1
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
