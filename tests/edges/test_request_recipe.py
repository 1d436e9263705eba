"""The README's recipe for a signed request from a script, run exactly as printed: the gateway answers what it
makes, and names the likely cause when a script signs with LF line ends instead."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.support.addresses import GATEWAY_ADDRESS, POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import process

README = Path(__file__).parents[2] / "README.md"


def recipe() -> str:
    """The README's shell recipe for a signed request, exactly as printed there."""
    text = README.read_text()
    start = text.index("<!-- signed-request recipe:")
    block = re.search(r"```sh\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None
    return block[1]


def run_recipe(keys: AuthorityKeys, directory: Path, script: str) -> bytes:
    values = {"FROM": POLICE_ADDRESS, "TO": GATEWAY_ADDRESS, "KEY": keys.police.fingerprint}
    filled, count = re.subn(r"^(FROM|TO|KEY)=\S+", lambda m: f"{m[1]}={values[m[1]]}", script, flags=re.MULTILINE)
    assert count == 3
    directory.mkdir()
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", filled], cwd=directory, check=True, capture_output=True,
        stdin=subprocess.DEVNULL, env={**os.environ, "GNUPGHOME": str(keys.home)}, timeout=60,
    )  # fmt: skip
    return (directory / "request.eml").read_bytes()


def test_the_readmes_signed_request_recipe_makes_a_request_the_gateway_answers(
    live: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    raw = run_recipe(keys, tmp_path / "recipe", recipe())
    outcome = process(live, raw)
    assert outcome["kind"] == "answered", outcome["reason"]


def test_a_request_signed_with_lf_line_ends_is_refused_naming_the_cause(
    live: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    """The recipe's one mistake a script makes: the part signed as the file holds it, not as mail carries it."""
    crlf = """    awk '{ sub(/\\r$/, ""); printf "%s\\r\\n", $0 }' > part.txt"""
    assert crlf in recipe()
    raw = run_recipe(keys, tmp_path / "lf", recipe().replace(crlf, "    cat > part.txt"))
    outcome = process(live, raw)
    assert outcome["kind"] == "quarantined"
    assert (
        "the signature does not match the signed part (it was altered or only partly signed; if your own script "
        "signed it, sign the part with CRLF line ends, RFC 3156 section 5)"
    ) in str(outcome["reason"])
