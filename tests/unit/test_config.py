"""The settings file: defaults, secrets, and one clear line naming the key and the file for every mistake."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from gateway import config as config_module
from gateway.config import (
    DEFAULT_CONFIG_PATH,
    DatabaseSettings,
    LimitSettings,
    MetricsSettings,
    Secret,
    SmimeSettings,
    load_config,
    resolve_config_path,
)
from gateway.errors import ConfigError
from tests.support.tls import make_ca

MINIMAL = '[gateway]\naddress = "requests@hmci.example"\nadmin_address = "admin@hmci.example"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def refusal(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_smtp_ca_file_is_read_at_load_comments_and_all_and_refused_without_a_certificate(tmp_path: Path) -> None:
    """A bundle as certifi writes it (a UTF-8 comment above each CA) loads; its certificates are kept, so that the
    relay's TLS trusts what was checked at start; a file with no certificate stops the start, naming it."""
    ca = make_ca(tmp_path / "relay-ca")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes("# Issuer: CN=Főtanúsítvány\n".encode() + ca.certificate.read_bytes() + b"# the end\n")
    text = MINIMAL + '[smtp]\nhost = "smtp.example"\nca_file = "bundle.pem"\n'
    config = load_config(write(tmp_path, text))
    assert config.smtp is not None
    assert config.smtp.ca is not None
    assert config.smtp.ca.path == bundle
    assert config.smtp.ca.pem == ca.certificate.read_text()
    bundle.write_text("# nothing but a comment\n")
    assert refusal(tmp_path, text).endswith(
        f"[smtp] ca_file: {bundle}: no CA certificate could be read (it holds no PEM certificate)"
    )


def test_minimal_file_gets_documented_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.gateway.marking == "OFFICIAL-SENSITIVE"
    assert config.database.url.value == f"sqlite+aiosqlite:///{tmp_path.resolve()}/gateway.db"
    assert config.gpg.home == (tmp_path / "gnupg").resolve()
    assert config.gpg.signing_key is None
    assert config.imap is None
    assert config.smtp is None


def test_addresses_are_stored_lower_case(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL.replace("requests@", "Requests@").replace("hmci", "HMCI", 1)))
    assert config.gateway.address == "requests@hmci.example"


def test_unknown_key_is_named_with_its_section_and_file(tmp_path: Path) -> None:
    message = refusal(tmp_path, MINIMAL + "colour = 'blue'\n")
    assert message == f"{(tmp_path / 'gateway.toml').resolve()}: [gateway] colour: unknown setting"


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    assert refusal(tmp_path, MINIMAL + "[imapp]\nhost = 'x'\n").endswith("[imapp]: unknown section")


def test_wrong_type_names_key_and_what_was_expected(tmp_path: Path) -> None:
    text = MINIMAL + '[imap]\nhost = "imap.example"\nport = "993"\nusername = "u"\npassword = "p"\n'
    assert refusal(tmp_path, text).endswith("[imap] port: expected an integer, got str '993'")


def test_the_look_between_idle_pushes_is_on_by_default_and_bounded(tmp_path: Path) -> None:
    imap = MINIMAL + '[imap]\nhost = "imap.example"\nusername = "u"\npassword = "p"\n'
    config = load_config(write(tmp_path, imap))
    assert config.imap is not None
    assert config.imap.check_ms == 200  # Dovecot's IDLE news come 0.5 s late: look sooner by default
    off = load_config(write(tmp_path, imap + "check_ms = 0\n"))
    assert off.imap is not None
    assert off.imap.check_ms == 0
    assert refusal(tmp_path, imap + "check_ms = -1\n").endswith("[imap] check_ms: must be between 0 and 60000, got -1")


def test_boolean_is_not_accepted_as_a_port(tmp_path: Path) -> None:
    text = MINIMAL + '[smtp]\nhost = "smtp.example"\nport = true\n'
    assert "[smtp] port: expected an integer, got bool True" in refusal(tmp_path, text)


def test_missing_required_value_is_named(tmp_path: Path) -> None:
    message = refusal(tmp_path, '[gateway]\naddress = "requests@hmci.example"\n')
    assert message.endswith("[gateway] admin_address: required setting is missing")


def test_missing_imap_host_is_named(tmp_path: Path) -> None:
    text = MINIMAL + '[imap]\nusername = "u"\npassword = "p"\n'
    assert refusal(tmp_path, text).endswith("[imap] host: required setting is missing")


def test_invalid_tls_mode_lists_the_choices(tmp_path: Path) -> None:
    text = MINIMAL + '[smtp]\nhost = "smtp.example"\ntls = "ssl"\n'
    assert refusal(tmp_path, text).endswith("[smtp] tls: must be one of 'starttls', 'tls', 'none', got 'ssl'")


def test_bad_address_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, MINIMAL.replace("admin@hmci.example", "not an address"))
    assert "[gateway] admin_address: 'not an address' is not a valid email address" in message


def test_short_fingerprint_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, MINIMAL + '[gpg]\nsigning_key = "DEADBEEF"\n')
    assert message.endswith("[gpg] signing_key: must be a full 40-hex-digit key fingerprint (see `gateway init`)")


def test_fingerprint_with_spaces_is_normalised(tmp_path: Path) -> None:
    spaced = "0123 4567 89ab cdef 0123  4567 89AB CDEF 0123 4567"
    config = load_config(write(tmp_path, MINIMAL + f'[gpg]\nsigning_key = "{spaced}"\n'))
    assert config.gpg.signing_key == "0123456789ABCDEF0123456789ABCDEF01234567"


def test_invalid_toml_says_where(tmp_path: Path) -> None:
    assert "not valid TOML" in refusal(tmp_path, MINIMAL + "port = \n")


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found \(copy config/gateway\.example\.toml"):
        load_config(tmp_path / "absent.toml")


def test_password_from_file(tmp_path: Path) -> None:
    (tmp_path / "imap.secret").write_text("s3cret\n")
    (tmp_path / "imap.secret").chmod(0o600)
    text = MINIMAL + '[imap]\nhost = "imap.example"\nusername = "u"\npassword_file = "imap.secret"\n'
    config = load_config(write(tmp_path, text))
    assert config.imap is not None
    assert config.imap.password is not None
    assert config.imap.password.value == "s3cret"
    assert config.imap.port == 993


def test_password_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "from-env")
    text = MINIMAL + '[smtp]\nhost = "smtp.example"\nusername = "u"\npassword_env = "TEST_SMTP_PASSWORD"\n'
    config = load_config(write(tmp_path, text))
    assert config.smtp is not None
    assert config.smtp.password == Secret("from-env")
    assert config.smtp.port == 587


def test_unset_environment_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_UNSET_PASSWORD", raising=False)
    text = MINIMAL + '[imap]\nhost = "h.example"\nusername = "u"\npassword_env = "TEST_UNSET_PASSWORD"\n'
    assert refusal(tmp_path, text).endswith("[imap] password_env: environment variable TEST_UNSET_PASSWORD is not set")


def test_two_forms_of_one_secret_are_refused(tmp_path: Path) -> None:
    text = MINIMAL + '[imap]\nhost = "h.example"\nusername = "u"\npassword = "a"\npassword_env = "B"\n'
    assert refusal(tmp_path, text).endswith("[imap] password: give only one of password, password_env")


def test_secrets_never_show_in_a_repr(tmp_path: Path) -> None:
    text = MINIMAL + '[imap]\nhost = "h.example"\nusername = "u"\npassword = "hunter2"\n'
    config = load_config(write(tmp_path, text))
    assert "hunter2" not in repr(config)


def test_postgres_url_gets_the_async_driver_and_prints_without_password(tmp_path: Path) -> None:
    text = MINIMAL + '[database]\nurl = "postgresql://gw:pw@db.example:5432/gateway"\n'
    settings = load_config(write(tmp_path, text)).database
    assert settings.url.value == "postgresql+asyncpg://gw:pw@db.example:5432/gateway"
    assert settings.display_url == "postgresql+asyncpg://gw:***@db.example:5432/gateway"
    assert not settings.is_sqlite


def test_unsupported_database_is_refused(tmp_path: Path) -> None:
    text = MINIMAL + '[database]\nurl = "mysql://db.example/gateway"\n'
    assert "[database] url: unsupported database 'mysql'" in refusal(tmp_path, text)


def test_in_memory_sqlite_is_refused(tmp_path: Path) -> None:
    text = MINIMAL + '[database]\nurl = "sqlite:///:memory:"\n'
    assert "an in-memory database would lose everything" in refusal(tmp_path, text)


def test_display_url_of_sqlite_is_the_url() -> None:
    assert DatabaseSettings(Secret("sqlite+aiosqlite:////x.db")).display_url == "sqlite+aiosqlite:////x.db"


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    assert resolve_config_path(None) == DEFAULT_CONFIG_PATH
    monkeypatch.setenv("GATEWAY_CONFIG", "/etc/gateway/from-env.toml")
    assert resolve_config_path(None) == Path("/etc/gateway/from-env.toml")
    assert resolve_config_path("/etc/gateway/from-cli.toml") == Path("/etc/gateway/from-cli.toml")


EXAMPLE = Path(__file__).parents[2] / "config" / "gateway.example.toml"


def test_the_shipped_example_is_refused_until_its_placeholder_addresses_are_replaced(tmp_path: Path) -> None:
    """Copied and forgotten, the example's addresses (at .invalid, which never receives mail) stop every command."""
    copy = write(tmp_path, EXAMPLE.read_text())
    with pytest.raises(ConfigError) as caught:
        load_config(copy)
    assert str(caught.value) == (
        f"{copy.resolve()}: [gateway] address: register-requests@hmci.invalid is a placeholder "
        "(.invalid never receives mail, RFC 6761): put the real address"
    )
    admin = write(tmp_path, EXAMPLE.read_text().replace("register-requests@hmci.invalid", "requests@hmci.example"))
    with pytest.raises(ConfigError, match=r"\[gateway\] admin_address: gateway-admin@hmci.invalid is a placeholder"):
        load_config(admin)
    config = load_config(write(tmp_path, EXAMPLE.read_text().replace("@hmci.invalid", "@hmci.example")))
    assert config.gateway.address == "register-requests@hmci.example"
    assert config.imap is None
    assert config.metrics is None


def uncommented_example() -> str:
    """The example with every commented section header and `key = value` line made live."""
    setting = re.compile(r"^# (\[\w+\]|\w+ = .*)$")
    return "\n".join(setting.sub(r"\1", line) for line in EXAMPLE.read_text().splitlines())


def test_every_setting_the_gateway_reads_is_shown_in_the_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example claims to show every setting: uncommented whole, it parses, and no setting config.py asks
    for is missing from it (a secret counts once, in whichever of its three forms it is shown)."""
    monkeypatch.setenv("GATEWAY_IMAP_PASSWORD", "x")
    monkeypatch.setenv("GATEWAY_SMTP_PASSWORD", "y")
    templates = tmp_path / "templates"
    templates.mkdir()
    text = uncommented_example().replace("@hmci.invalid", "@hmci.example")
    text = text.replace('templates = "/etc/register-gateway/templates"', f'templates = "{templates}"')
    relay_ca = make_ca(tmp_path / "relay-ca").certificate  # [smtp] ca_file is read as the settings load
    text = text.replace('ca_file = "/etc/register-gateway/relay-ca.pem"', f'ca_file = "{relay_ca}"')
    asked: set[tuple[str, str]] = set()
    finish = config_module._Section.finish

    def recording(section: config_module._Section) -> None:  # every key each section asked for, given or not
        asked.update((section._name, key) for key in section._seen)
        finish(section)

    monkeypatch.setattr(config_module._Section, "finish", recording)
    config = load_config(write(tmp_path, text))
    assert config.imap is not None
    assert config.imap.password is not None
    assert config.imap.password.value == "x"
    assert config.smtp is not None
    assert config.smtp.retry_seconds == 60
    assert config.inbound_smtp is not None
    assert config.metrics == MetricsSettings()  # the example states the defaults
    assert config.limits == LimitSettings()
    assert config.smime is not None
    shown = {(section, key) for section, table in tomllib.loads(text).items() for key in table}
    # A table inside a section ([imap.oauth]) stands instead of a setting shown live (the password): it is shown
    # commented out, and checked by a test of its own.
    shown |= {(section, key) for section, key in asked if f"# [{section}.{key}]\n" in text}
    missing = set()
    for section, key in asked:
        base = key.removesuffix("_file").removesuffix("_env")
        forms = {(section, base), (section, f"{base}_file"), (section, f"{base}_env")}
        if not forms & shown:
            missing.add(f"[{section}] {key}")
    assert not missing
    assert {section for section, _ in asked} == set(config_module._SECTIONS)


def test_empty_secrets_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.secret").write_text("\n")
    (tmp_path / "empty.secret").chmod(0o600)
    inline = MINIMAL + '[imap]\nhost = "h.example"\nusername = "u"\npassword = ""\n'
    assert refusal(tmp_path, inline).endswith("[imap] password: the secret is empty")
    from_file = MINIMAL + '[smtp]\nhost = "h.example"\nusername = "u"\npassword_file = "empty.secret"\n'
    assert refusal(tmp_path, from_file).endswith("[smtp] password_file: the secret is empty")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+asyncpg://gw:s3cr/etPW@db.example:5432/gateway",
            "postgresql+asyncpg://gw:***@db.example:5432/gateway",
        ),
        ("postgresql+asyncpg://:TopSecret@db.example/gateway", "postgresql+asyncpg://:***@db.example/gateway"),
        ("postgresql+asyncpg://gw@db.example/gateway?password=QuerySecret", None),
    ],
)
def test_database_passwords_never_show(url: str, shown: str | None) -> None:
    display = DatabaseSettings(Secret(url)).display_url
    assert "Secret" not in display
    assert "s3cr" not in display
    if shown is not None:
        assert display == shown


def test_malformed_postgres_url_is_a_config_error_that_does_not_echo_it(tmp_path: Path) -> None:
    message = refusal(tmp_path, MINIMAL + '[database]\nurl = "postgresql://gw:hunter2@db.example:abc/gateway"\n')
    assert message.endswith("[database] url: not a valid PostgreSQL URL (postgresql+asyncpg://USER@HOST:PORT/DATABASE)")
    assert "hunter2" not in message


def test_a_templates_directory_must_exist(tmp_path: Path) -> None:
    assert refusal(tmp_path, MINIMAL + 'templates = "nowhere"\n').endswith(
        f"{tmp_path.resolve()}/nowhere is not a directory"
    )
    (tmp_path / "mine").mkdir()
    assert (
        load_config(write(tmp_path, MINIMAL + 'templates = "mine"\n')).gateway.templates
        == (tmp_path / "mine").resolve()
    )


def test_limits_section_as_shipped_and_checked(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    start = text.index("# [limits]")
    section = text[start : text.index("\n\n", start)]  # up to the next section's comment
    block = "\n".join(line[2:] for line in section.splitlines() if line.startswith("# "))
    config = load_config(write(tmp_path, MINIMAL + block))
    assert config.limits == LimitSettings()  # the example states the defaults
    assert refusal(tmp_path, MINIMAL + "[limits]\nanswers_per_day = 0\n").endswith(
        "[limits] answers_per_day: must be between 1 and 100000, got 0"
    )


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "smtp.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    text = MINIMAL + '[smtp]\nhost = "h.example"\nusername = "u"\npassword_file = "smtp.secret"\n'
    message = refusal(tmp_path, text)
    assert message.endswith(
        f"[smtp] password_file: {secret} is open to other users (mode 0644): run `chmod 600 {secret}`"
    )
    assert "s3cret" not in message


def test_smime_section_as_shipped_with_paths_beside_the_settings_file(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    block = text[text.index("# [smime]") :].split("\n\n")[0]
    settings = [line[2:] for line in block.splitlines() if re.match(r"# (\[smime\]$|[a-z_]+ = )", line)]
    assert [line.split(" =")[0] for line in settings] == ["[smime]", "certificate", "key", "trust_store", "binary"]
    config = load_config(write(tmp_path, MINIMAL + "\n".join(settings) + "\n"))
    here = tmp_path.resolve()
    assert config.smime == SmimeSettings(
        certificate=here / "smime-cert.pem",
        key=here / "smime-key.pem",
        trust_store=Path("/etc/ssl/certs/ca-certificates.crt"),
        binary="openssl",
    )
    assert load_config(write(tmp_path, MINIMAL + "[smime]\n")).smime == SmimeSettings(
        here / "smime-cert.pem", here / "smime-key.pem", None, "openssl"
    )  # the defaults, and no trust store unless one is named
    assert load_config(write(tmp_path, MINIMAL)).smime is None  # no section: no S/MIME identity at all
    assert refusal(tmp_path, MINIMAL + '[smime]\ncertificate = ""\n').endswith("[smime] certificate: must not be empty")


IMAP_OAUTH = MINIMAL + '[imap]\nhost = "outlook.office365.com"\nusername = "register@hmci.example"\n'
TENANT = "0a1b2c3d-0000-4000-8000-00000000beef"


def test_the_microsoft365_preset_needs_only_the_tenant_and_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_OAUTH_SECRET", "from-env")
    text = IMAP_OAUTH + (
        f'[imap.oauth]\npreset = "microsoft365"\ntenant = "{TENANT}"\nclient_id = "app-id"\n'
        'client_secret_env = "TEST_OAUTH_SECRET"\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.imap is not None
    assert config.imap.password is None
    oauth = config.imap.oauth
    assert oauth is not None
    assert oauth.authority == f"https://login.microsoftonline.com/{TENANT}"
    assert oauth.scope == "https://outlook.office365.com/.default"  # Exchange Online's IMAP and SMTP AUTH
    assert oauth.secret == Secret("from-env")
    assert oauth.certificate is None
    assert "from-env" not in repr(config)


def test_an_oauth_client_secret_follows_the_file_rules(tmp_path: Path) -> None:
    secret = tmp_path / "client.secret"
    secret.write_text("file-secret\n")
    secret.chmod(0o644)
    text = IMAP_OAUTH + (
        '[imap.oauth]\nauthority = "https://idp.example/tenant"\nclient_id = "c"\nscope = "imap"\n'
        'client_secret_file = "client.secret"\n'
    )
    assert "[imap.oauth] client_secret_file: " in refusal(tmp_path, text)
    assert "chmod 600" in refusal(tmp_path, text)
    secret.chmod(0o600)
    config = load_config(write(tmp_path, text))
    assert config.imap is not None
    assert config.imap.oauth is not None
    assert config.imap.oauth.secret == Secret("file-secret")


@pytest.mark.parametrize(
    ("oauth", "problem"),
    [
        ('client_id = "c"\nclient_secret = "s"\nscope = "x"\n', "[imap.oauth] authority: required setting is missing"),
        (
            'authority = "http://idp.example/t"\nclient_id = "c"\nclient_secret = "s"\nscope = "x"\n',
            "[imap.oauth] authority: expected an https URL naming the tenant",
        ),
        (
            'authority = "https://idp.example"\nclient_id = "c"\nclient_secret = "s"\nscope = "x"\n',
            "[imap.oauth] authority: expected an https URL naming the tenant",
        ),
        ('preset = "microsoft365"\nclient_id = "c"\nclient_secret = "s"\n', "[imap.oauth] tenant: required"),
        (
            'preset = "microsoft365"\ntenant = "x/../evil"\nclient_id = "c"\nclient_secret = "s"\n',
            "[imap.oauth] tenant: expected the tenant's ID (a GUID) or its domain name",
        ),
        (
            'preset = "microsoft365"\ntenant = "t"\nauthority = "https://a.example/t"\nclient_id = "c"\n'
            'client_secret = "s"\n',
            "[imap.oauth] authority: give either preset",
        ),
        ('preset = "google"\ntenant = "t"\n', "[imap.oauth] preset: must be one of 'microsoft365'"),
        ('preset = "microsoft365"\ntenant = "t"\nclient_id = "c"\n', "[imap.oauth] client_secret: give a client"),
        (
            'preset = "microsoft365"\ntenant = "t"\nclient_secret = "s"\n',
            "[imap.oauth] client_id: required setting is missing",
        ),
        (
            'preset = "microsoft365"\ntenant = "t"\nclient_id = "c"\nclient_secret = "s"\ncolour = 1\n',
            "[imap.oauth] colour: unknown setting",
        ),
        (
            'preset = "microsoft365"\ntenant = "t"\nclient_id = "c"\nclient_secret = "s"\ncertificate = "c.pem"\n',
            "[imap.oauth] private_key: certificate and private_key go together",
        ),
    ],
)
def test_an_incomplete_or_wrong_oauth_client_is_named(tmp_path: Path, oauth: str, problem: str) -> None:
    assert problem in refusal(tmp_path, IMAP_OAUTH + "[imap.oauth]\n" + oauth)


def test_a_password_and_an_oauth_client_are_not_both_given(tmp_path: Path) -> None:
    oauth = '[imap.oauth]\npreset = "microsoft365"\ntenant = "t"\nclient_id = "c"\nclient_secret = "s"\n'
    both = IMAP_OAUTH + 'password = "p"\n' + oauth
    assert refusal(tmp_path, both).endswith("[imap] password: give a password or [imap.oauth], not both")
    neither = IMAP_OAUTH
    assert "[imap] password: required setting is missing (or give password_file / password_env, or [imap.oauth])" in (
        refusal(tmp_path, neither)
    )
    smtp = MINIMAL + '[smtp]\nhost = "smtp.office365.com"\n' + oauth.replace("imap.oauth", "smtp.oauth")
    assert refusal(tmp_path, smtp).endswith(
        "[smtp] username: required with [smtp.oauth]: the mailbox the token logs in as"
    )
    config = load_config(
        write(tmp_path, smtp.replace("[smtp.oauth]", 'username = "register@hmci.example"\n[smtp.oauth]'))
    )
    assert config.smtp is not None
    assert config.smtp.oauth is not None
    assert config.smtp.oauth.section == "smtp.oauth"
    assert config.smtp.port == 587


def test_an_oauth_client_certificate_must_match_its_private_key(tmp_path: Path) -> None:
    from tests.support.oauth import write_client_certificate  # noqa: PLC0415 - the only test that makes one

    cert, key = write_client_certificate(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = write_client_certificate(other)
    text = IMAP_OAUTH + (
        '[imap.oauth]\npreset = "microsoft365"\ntenant = "t"\nclient_id = "c"\n'
        f'certificate = "{cert}"\nprivate_key = "{key}"\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.imap is not None
    assert config.imap.oauth is not None
    credential = config.imap.oauth.certificate
    assert credential is not None
    assert credential.certificate.startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" not in repr(config)
    assert refusal(tmp_path, text.replace(str(key), str(other_key))).endswith(
        f"[imap.oauth] private_key: {other_key} is not the private key of {cert}"
    )
    key.chmod(0o640)
    assert "[imap.oauth] private_key: " in refusal(tmp_path, text)
    assert "chmod 600" in refusal(tmp_path, text)
    both = text.replace('client_id = "c"\n', 'client_id = "c"\nclient_secret = "s"\n')
    key.chmod(0o600)
    assert "[imap.oauth] client_secret: give a client secret" in refusal(tmp_path, both)


def test_the_examples_oauth_tables_work_when_uncommented_and_show_every_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[imap.oauth] and [smtp.oauth] as the example shows them (the Microsoft 365 preset live, the other forms as
    alternatives) load as they are; every key the table reads is in the example."""
    monkeypatch.setenv("GATEWAY_OAUTH_SECRET", "from-env")
    example = EXAMPLE.read_text()
    for name in ("imap", "smtp"):
        block = example.split(f"# [{name}.oauth]\n")[1].split("\n\n")[0]
        live = "\n".join(line[4:] for line in block.splitlines() if re.match(r"#   \w+ = ", line))
        text = MINIMAL + f'[{name}]\nhost = "h.example"\nusername = "register@hmci.example"\n[{name}.oauth]\n{live}\n'
        section = getattr(load_config(write(tmp_path, text)), name)
        assert section.oauth is not None
        assert section.oauth.authority == "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000"
        assert section.oauth.secret == Secret("from-env")
    shown = example.split("# [imap.oauth]\n")[1].split("\n\n")[0]
    keys = ("preset", "tenant", "client_id", "client_secret", "certificate", "private_key", "authority", "scope")
    for key in (*keys, "ca_file"):
        assert re.search(rf"^#   (# )?{key}(_env|_file)? = ", shown, re.M), key


def test_an_oauth_token_never_crosses_a_network_unencrypted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OAUTH_SECRET", "s")
    client = (
        f'preset = "microsoft365"\ntenant = "{TENANT}"\nclient_id = "app-id"\nclient_secret_env = "TEST_OAUTH_SECRET"\n'
    )
    plain = MINIMAL + '[imap]\nhost = "imap.hmci.example"\nusername = "u"\ntls = "none"\n[imap.oauth]\n' + client
    assert refusal(tmp_path, plain).endswith(
        '[imap] tls: "none" would send the OAuth token to imap.hmci.example unencrypted: use TLS'
    )
    loopback = plain.replace("imap.hmci.example", "127.0.0.1")  # a server on this machine: nothing crosses a wire
    config = load_config(write(tmp_path, loopback))
    assert config.imap is not None
    assert config.imap.tls == "none"
