"""Tests of penstock.config: parsers, options, Configuration, layering and derived settings."""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from penstock import StreamExecutionEnvironment
from penstock import config as cfg
from penstock.config import (
    BUFFER_TIMEOUT,
    DATA_PORT,
    EXECUTION_TARGET,
    MAX_PARALLELISM,
    MINICLUSTER_NUMBER_OF_TASKMANAGERS,
    NETWORK_MEMORY_FRACTION,
    NETWORK_MEMORY_MAX,
    NETWORK_MEMORY_MIN,
    NUMBER_OF_TASK_SLOTS,
    OPTIONS,
    PARALLELISM_DEFAULT,
    SEGMENT_SIZE,
    SSL_INTERNAL_KEY_PASSWORD,
    SSL_INTERNAL_KEYSTORE,
    ConfigOption,
    Configuration,
    ShuffleOptions,
)
from penstock.errors import ConfigurationError, PenstockError

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
MAX_LONG = 2**63 - 1


# --------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------


class TestIntParser:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [(4, 4), ("4", 4), (" 4 ", 4), ("+4", 4), ("-3", -3), (4.0, 4), ("0", 0)],
    )
    def test_valid(self, value: object, expected: int) -> None:
        assert cfg.int_parser()(value) == expected

    @pytest.mark.parametrize("value", [True, 4.5, float("nan"), "4.5", "four", "", "0x10", [4]])
    def test_invalid(self, value: object) -> None:
        with pytest.raises(ValueError):
            cfg.int_parser()(value)

    def test_bounds(self) -> None:
        parse = cfg.int_parser(1, 10)
        assert parse(1) == 1
        assert parse(10) == 10
        with pytest.raises(ValueError, match="between 1 and 10"):
            parse(0)
        with pytest.raises(ValueError, match="between 1 and 10"):
            parse("11")
        with pytest.raises(ValueError, match="at least 1"):
            cfg.int_parser(min_value=1)(0)
        with pytest.raises(ValueError, match="at most 3"):
            cfg.int_parser(max_value=3)(4)


class TestFloatParser:
    def test_valid(self) -> None:
        parse = cfg.float_parser(0.0, 1.0, min_inclusive=False, max_inclusive=False)
        assert parse("0.25") == 0.25
        assert parse(0.5) == 0.5
        assert parse(" 1e-3 ") == 0.001

    @pytest.mark.parametrize("value", [0, 0.0, 1, "1.0", -0.5, 2])
    def test_exclusive_bounds(self, value: object) -> None:
        parse = cfg.float_parser(0.0, 1.0, min_inclusive=False, max_inclusive=False)
        with pytest.raises(ValueError, match=r"greater than 0.0|less than 1.0"):
            parse(value)

    def test_inclusive_bounds(self) -> None:
        parse = cfg.float_parser(0.0, 1.0)
        assert parse(0) == 0.0
        assert parse("1") == 1.0
        with pytest.raises(ValueError, match=r"at most 1.0"):
            parse(1.5)
        with pytest.raises(ValueError, match=r"at least 0.0"):
            parse(-0.1)

    @pytest.mark.parametrize("value", ["nan", "inf", float("inf"), "x", True, None, b"1"])
    def test_invalid(self, value: object) -> None:
        with pytest.raises(ValueError):
            cfg.float_parser()(value)


class TestBoolParser:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [(True, True), (False, False), ("true", True), ("FALSE", False), (" True ", True)],
    )
    def test_valid(self, value: object, expected: bool) -> None:
        assert cfg.parse_bool(value) is expected

    @pytest.mark.parametrize("value", ["yes", "1", 1, 0, "", None])
    def test_invalid(self, value: object) -> None:
        with pytest.raises(ValueError):
            cfg.parse_bool(value)


class TestChoiceParser:
    def test_case_insensitive_returns_canonical_spelling(self) -> None:
        parse = cfg.choice_parser("TLSv1.2", "TLSv1.3")
        assert parse("tlsv1.3") == "TLSv1.3"
        assert parse(" TLSv1.2 ") == "TLSv1.2"

    def test_invalid(self) -> None:
        parse = cfg.choice_parser("local", "remote")
        with pytest.raises(ValueError, match="must be one of 'local', 'remote'"):
            parse("cluster")
        with pytest.raises(ValueError, match="expected a string"):
            parse(1)


class TestStringAndPathParsers:
    def test_string_kept_as_given(self) -> None:
        assert cfg.parse_string(" secret ") == " secret "
        for bad in ("", "   ", 3):
            with pytest.raises(ValueError):
                cfg.parse_string(bad)

    def test_path(self, tmp_path: Path) -> None:
        assert cfg.parse_path(tmp_path / "cert.pem") == os.fspath(tmp_path / "cert.pem")
        assert cfg.parse_path("cert.pem") == "cert.pem"
        for bad in ("", b"cert.pem", 1):
            with pytest.raises(ValueError):
                cfg.parse_path(bad)


class TestSizes:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("32kb", 32 * KIB),
            ("32 KiB", 32 * KIB),
            ("32 k", 32 * KIB),
            ("32KB", 32 * KIB),
            ("64mb", 64 * MIB),
            ("64 M", 64 * MIB),
            ("1 gb", GIB),
            ("1gib", GIB),
            ("2t", 2 << 40),
            ("1 tebibytes", 1 << 40),
            ("1024", 1024),
            ("7 bytes", 7),
            ("7b", 7),
            ("0", 0),
            (1024, 1024),
            (1024.0, 1024),
        ],
    )
    def test_valid(self, value: object, expected: int) -> None:
        assert cfg.parse_size(value) == expected

    @pytest.mark.parametrize(
        "value",
        ["1.5mb", "-1", -1, 1.5, "32 xb", "kb", "", "32 k b", True, None, [1], "8 ms", 2**63],
    )
    def test_invalid(self, value: object) -> None:
        with pytest.raises(ValueError):
            cfg.parse_size(value)

    def test_error_explains_units(self) -> None:
        with pytest.raises(ValueError, match=r"'32 xb' is not a memory size.*'32 kb'"):
            cfg.parse_size("32 xb")
        with pytest.raises(ValueError, match="not a whole number of bytes"):
            cfg.parse_size(0.5)

    @pytest.mark.parametrize(
        ("size", "text"),
        [(0, "0 bytes"), (100, "100 bytes"), (32 * KIB, "32 kb"), (1536 * KIB, "1536 kb"),
         (64 * MIB, "64 mb"), (GIB, "1 gb"), (3 << 40, "3 tb")],
    )  # fmt: skip
    def test_format(self, size: int, text: str) -> None:
        assert cfg.format_size(size) == text

    @given(st.integers(0, MAX_LONG))
    def test_format_parse_round_trip(self, size: int) -> None:
        assert cfg.parse_size(cfg.format_size(size)) == size

    @given(
        st.integers(0, 2**20),
        st.sampled_from([("", 1), ("b", 1), ("k", KIB), ("kb", KIB), ("kib", KIB),
                         ("m", MIB), ("mb", MIB), ("mib", MIB), ("g", GIB), ("gb", GIB),
                         ("gib", GIB), ("t", 1 << 40), ("tb", 1 << 40), ("tib", 1 << 40)]),
        st.sampled_from(["", " "]),
        st.booleans(),
    )  # fmt: skip
    def test_any_spelling(
        self, number: int, unit: tuple[str, int], space: str, upper: bool
    ) -> None:
        suffix, multiplier = unit
        text = f"{number}{space}{suffix.upper() if upper else suffix}"
        assert cfg.parse_size(text) == number * multiplier

    def test_size_parser_bounds_and_power_of_two(self) -> None:
        parse = cfg.size_parser(256, 16 * MIB, power_of_two=True)
        assert parse("256b") == 256
        assert parse("16mb") == 16 * MIB
        with pytest.raises(ValueError, match="at least 256 bytes"):
            parse(128)
        with pytest.raises(ValueError, match="at most 16 mb"):
            parse("32 mb")
        with pytest.raises(ValueError, match="power of two"):
            parse("48 kb")


class TestDurations:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("100 ms", 100),
            ("100ms", 100),
            ("100", 100),
            ("10 s", 10_000),
            ("10S", 10_000),
            ("3 seconds", 3000),
            ("1 min", 60_000),
            ("1m", 60_000),
            ("2 h", 7_200_000),
            ("1 d", 86_400_000),
            ("-1", -1),
            ("-1 ms", -1),
            ("5000 us", 5),
            ("2000000 ns", 2),
            (250, 250),
            (-1, -1),
            (30.0, 30),
            (timedelta(seconds=1.5), 1500),
        ],
    )
    def test_valid(self, value: object, expected: int) -> None:
        assert cfg.parse_duration(value) == expected

    @pytest.mark.parametrize(
        "value",
        ["1.5 s", "10 parsecs", "ms", "", "1 500 ms", "1500 us", 0.5, True, None,
         timedelta(microseconds=1), [1], "9223372036854775808"],
    )  # fmt: skip
    def test_invalid(self, value: object) -> None:
        with pytest.raises(ValueError):
            cfg.parse_duration(value)

    @pytest.mark.parametrize(
        ("millis", "text"),
        [(0, "0 ms"), (100, "100 ms"), (10_000, "10 s"), (60_000, "1 min"), (90_000, "90 s"),
         (7_200_000, "2 h"), (86_400_000, "1 d"), (-1, "-1 ms"), (-60_000, "-1 min")],
    )  # fmt: skip
    def test_format(self, millis: int, text: str) -> None:
        assert cfg.format_duration(millis) == text

    @given(st.integers(-MAX_LONG, MAX_LONG))
    def test_format_parse_round_trip(self, millis: int) -> None:
        assert cfg.parse_duration(cfg.format_duration(millis)) == millis

    @given(
        st.integers(0, 2**20),
        st.sampled_from([("", 1), ("ms", 1), ("s", 1000), ("sec", 1000), ("min", 60_000),
                         ("m", 60_000), ("h", 3_600_000), ("hours", 3_600_000),
                         ("d", 86_400_000)]),
        st.sampled_from(["", " "]),
        st.booleans(),
    )  # fmt: skip
    def test_any_spelling(
        self, number: int, unit: tuple[str, int], space: str, upper: bool
    ) -> None:
        suffix, multiplier = unit
        text = f"{number}{space}{suffix.upper() if upper else suffix}"
        assert cfg.parse_duration(text) == number * multiplier

    def test_duration_parser_bounds(self) -> None:
        parse = cfg.duration_parser(min_ms=-1)
        assert parse("-1") == -1
        assert parse("0") == 0
        with pytest.raises(ValueError, match="at least -1 ms"):
            parse(-2)
        with pytest.raises(ValueError, match="between 0 ms and 10 ms"):
            cfg.duration_parser(0, 10)("1 s")


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------


class TestOptions:
    def test_every_default_is_valid(self) -> None:
        for option in OPTIONS.values():
            if option.default is not None:
                assert option.parse(option.default) == option.default, option.key

    def test_names_are_unique(self) -> None:
        names = [n for o in OPTIONS.values() for n in (o.key, *o.deprecated_keys)]
        assert len(names) == len(set(names))
        env_names = {cfg.env_var_name(name) for name in names}
        assert len(env_names) == len(names)

    def test_constants_are_registered(self) -> None:
        constants = [
            value for name, value in vars(cfg).items()
            if name.isupper() and isinstance(value, ConfigOption)
        ]  # fmt: skip
        assert {option.key for option in constants} == set(OPTIONS)

    @pytest.mark.parametrize(
        ("option", "default"),
        [
            (cfg.PARALLELISM_DEFAULT, 1),
            (cfg.MAX_PARALLELISM, -1),
            (cfg.NUMBER_OF_TASK_SLOTS, 1),
            (cfg.MINICLUSTER_NUMBER_OF_TASKMANAGERS, None),
            (cfg.EXECUTION_TARGET, "minicluster"),
            (cfg.BUFFER_TIMEOUT, 100),
            (cfg.SEGMENT_SIZE, 32 * KIB),
            (cfg.NETWORK_MEMORY_FRACTION, 0.1),
            (cfg.NETWORK_MEMORY_MIN, 64 * MIB),
            (cfg.NETWORK_MEMORY_MAX, GIB),
            (cfg.FLINK_MEMORY_SIZE, 640 * MIB),
            (cfg.BUFFERS_PER_CHANNEL, 2),
            (cfg.FLOATING_BUFFERS_PER_GATE, 8),
            (cfg.MAX_BUFFERS_PER_CHANNEL, 10),
            (cfg.MAX_OVERDRAFT_BUFFERS_PER_GATE, 5),
            (cfg.BUFFERS_REQUEST_TIMEOUT, 30_000),
            (cfg.REQUEST_BACKOFF_INITIAL, 100),
            (cfg.REQUEST_BACKOFF_MAX, 10_000),
            (cfg.PARTITION_REQUEST_TIMEOUT, 10_000),
            (cfg.NETWORK_RETRIES, 0),
            (cfg.NETTY_CLIENT_CONNECT_TIMEOUT_SEC, 120),
            (cfg.DETAILED_METRICS, False),
            (cfg.DATA_PORT, 0),
            (cfg.TASKMANAGER_HOST, "127.0.0.1"),
            (cfg.DATA_SSL_ENABLED, True),
            (cfg.SSL_INTERNAL_ENABLED, False),
            (cfg.SSL_INTERNAL_KEYSTORE, None),
            (cfg.SSL_INTERNAL_KEY, None),
            (cfg.SSL_INTERNAL_KEY_PASSWORD, None),
            (cfg.SSL_INTERNAL_TRUSTSTORE, None),
            (cfg.SSL_INTERNAL_PROTOCOL, "TLSv1.2"),
            (cfg.SSL_INTERNAL_HANDSHAKE_TIMEOUT, 10_000),
            (cfg.JOBMANAGER_RPC_ADDRESS, "localhost"),
            (cfg.JOBMANAGER_RPC_PORT, 6123),
            (cfg.HEARTBEAT_INTERVAL, 10_000),
            (cfg.HEARTBEAT_TIMEOUT, 50_000),
        ],
    )
    def test_flink_defaults(self, option: ConfigOption[object], default: object) -> None:
        assert option.default == default
        assert Configuration().get(option) == default

    def test_option_is_frozen(self) -> None:
        with pytest.raises(dataclasses.FrozenInstanceError):
            PARALLELISM_DEFAULT.key = "x"  # type: ignore[misc]

    def test_parse_wraps_reason_in_configuration_error(self) -> None:
        with pytest.raises(ConfigurationError) as info:
            PARALLELISM_DEFAULT.parse("0")
        assert info.value.key == "parallelism.default"
        assert info.value.value == "0"
        assert info.value.reason == "must be at least 1"

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("parallelism.default", 0),
            ("pipeline.max-parallelism", 0),
            ("pipeline.max-parallelism", -2),
            ("pipeline.max-parallelism", 32769),
            ("taskmanager.numberOfTaskSlots", "0"),
            ("minicluster.number-of-taskmanagers", 0),
            ("execution.target", "yarn"),
            ("execution.buffer-timeout", "-2 ms"),
            ("taskmanager.memory.segment-size", "128 b"),
            ("taskmanager.memory.segment-size", "32 mb"),
            ("taskmanager.memory.segment-size", 3000),
            ("taskmanager.memory.network.fraction", "1"),
            ("taskmanager.memory.network.fraction", 0),
            ("taskmanager.memory.network.min", "-1 mb"),
            ("taskmanager.network.memory.buffers-per-channel", -1),
            ("taskmanager.network.memory.max-buffers-per-channel", 0),
            ("taskmanager.network.memory.max-buffers-per-channel", 1),
            ("taskmanager.network.partition-request-timeout", 0),
            ("taskmanager.data.port", 65536),
            ("taskmanager.data.ssl.enabled", "yes"),
            ("taskmanager.host", ""),
            ("security.ssl.internal.protocol", "SSLv3"),
            ("jobmanager.rpc.port", -1),
            ("heartbeat.interval", "0 s"),
        ],
    )
    def test_bad_values(self, key: str, value: object) -> None:
        with pytest.raises(ConfigurationError) as info:
            Configuration({key: value})
        assert info.value.key == key
        assert info.value.value == value
        assert key in str(info.value)
        assert repr(value) in str(info.value)

    def test_max_parallelism_accepts_unset_and_range(self) -> None:
        assert Configuration({"pipeline.max-parallelism": "-1"}).get(MAX_PARALLELISM) == -1
        assert Configuration({"pipeline.max-parallelism": 32768}).get(MAX_PARALLELISM) == 32768

    def test_optional_options(self) -> None:
        config = Configuration({"minicluster.number-of-taskmanagers": "3"})
        assert config.get(MINICLUSTER_NUMBER_OF_TASKMANAGERS) == 3
        assert config.get(cfg.SSL_INTERNAL_KEYSTORE) is None

    def test_buffer_timeout_special_values(self) -> None:
        assert Configuration({"execution.buffer-timeout": -1}).get(BUFFER_TIMEOUT) == -1
        assert Configuration({"execution.buffer-timeout": "0"}).get(BUFFER_TIMEOUT) == 0


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


class TestConfiguration:
    def test_strings_and_typed_values_are_equal(self) -> None:
        typed = Configuration({"parallelism.default": 4, "taskmanager.memory.segment-size": 65536})
        text = Configuration(
            {"parallelism.default": "4", "taskmanager.memory.segment-size": "64kb"}
        )
        assert typed == text
        assert typed.get(PARALLELISM_DEFAULT) == 4
        assert text.get(SEGMENT_SIZE) == 64 * KIB

    def test_empty(self) -> None:
        assert Configuration() == Configuration(None) == Configuration({})
        assert len(Configuration()) == 0
        assert Configuration().to_dict() == {}

    def test_copy_is_independent(self) -> None:
        original = Configuration({"parallelism.default": 2})
        copy = Configuration(original)
        copy.set("parallelism.default", 3)
        assert original.get(PARALLELISM_DEFAULT) == 2
        assert copy.get(PARALLELISM_DEFAULT) == 3

    def test_set_validates_and_keeps_old_value_on_error(self) -> None:
        config = Configuration({"parallelism.default": 2})
        with pytest.raises(ConfigurationError, match="must be at least 1"):
            config.set("parallelism.default", "0")
        assert config.get(PARALLELISM_DEFAULT) == 2
        config.set(PARALLELISM_DEFAULT, 5)
        config.set(EXECUTION_TARGET, "LOCAL")
        assert config.get(PARALLELISM_DEFAULT) == 5
        assert config.get(EXECUTION_TARGET) == "local"

    def test_none_value_is_rejected(self) -> None:
        with pytest.raises(ConfigurationError, match="a value is required") as info:
            Configuration({"security.ssl.internal.keystore": None})
        assert info.value.key == "security.ssl.internal.keystore"

    @pytest.mark.parametrize("values", ["parallelism.default=2", [("parallelism.default", 2)]])
    def test_a_configuration_is_built_from_a_mapping_only(self, values: object) -> None:
        with pytest.raises(ConfigurationError, match="built from a mapping"):
            Configuration(values)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="built from a mapping"):
            StreamExecutionEnvironment.get_execution_environment(values)  # type: ignore[arg-type]

    def test_non_string_key_is_rejected(self) -> None:
        with pytest.raises(ConfigurationError, match="a key must be a string"):
            Configuration({1: "x"})  # type: ignore[dict-item]

    def test_get_takes_a_key_as_well_as_an_option(self) -> None:
        config = Configuration({"parallelism.default": "4", "heartbeat.timeout": "1 min"})
        assert config.get("parallelism.default") == 4
        assert config.get("heartbeat.timeout") == 60_000
        assert config.get("heartbeat.interval") == 10_000  # the default
        with pytest.raises(ConfigurationError, match=r"parallelism\.defualt"):
            config.get("parallelism.defualt")

    def test_get_raw_and_contains(self) -> None:
        config = Configuration({"taskmanager.memory.segment-size": "64 kb"})
        assert config.get_raw("taskmanager.memory.segment-size") == 64 * KIB
        assert config.get_raw("parallelism.default") is None
        assert config.contains("taskmanager.memory.segment-size")
        assert config.contains(SEGMENT_SIZE)
        assert "taskmanager.memory.segment-size" in config
        assert not config.contains("parallelism.default")
        assert not config.contains("no.such.key")
        assert 42 not in config
        with pytest.raises(ConfigurationError, match="Unknown configuration key"):
            config.get_raw("no.such.key")

    def test_to_dict_holds_only_explicit_keys(self) -> None:
        config = Configuration({"execution.buffer-timeout": "1 s", "parallelism.default": "3"})
        assert config.to_dict() == {"execution.buffer-timeout": 1000, "parallelism.default": 3}
        assert Configuration(config.to_dict()) == config
        assert dict(config.items()) == config.to_dict()
        assert list(config) == ["execution.buffer-timeout", "parallelism.default"]

    def test_items_is_read_only(self) -> None:
        config = Configuration({"parallelism.default": 3})
        items = config.items()
        assert ("parallelism.default", 3) in items
        config.set("parallelism.default", 4)
        assert ("parallelism.default", 4) in items

    def test_to_dynamic_properties_round_trip(self) -> None:
        config = Configuration(
            {
                "taskmanager.data.ssl.enabled": False,
                "execution.buffer-timeout": "-1",
                "taskmanager.memory.network.fraction": "0.25",
                "taskmanager.memory.segment-size": "64 kb",
                "security.ssl.internal.key-password": "p=a#ss",
            }
        )
        properties = config.to_dynamic_properties()
        assert "taskmanager.data.ssl.enabled=false" in properties
        assert Configuration.from_dynamic_properties(properties) == config

    def test_or_right_side_wins_and_makes_a_new_configuration(self) -> None:
        left = Configuration({"parallelism.default": 2, "taskmanager.numberOfTaskSlots": 4})
        right = Configuration({"parallelism.default": 8})
        merged = left | right
        assert merged.get(PARALLELISM_DEFAULT) == 8
        assert merged.get(NUMBER_OF_TASK_SLOTS) == 4
        assert left.get(PARALLELISM_DEFAULT) == 2
        assert merged is not left
        assert (left | {"parallelism.default": "3"}).get(PARALLELISM_DEFAULT) == 3
        from_dict = {"parallelism.default": 3} | right
        assert isinstance(from_dict, Configuration)
        assert from_dict.get(PARALLELISM_DEFAULT) == 8
        with pytest.raises(ConfigurationError):
            left | {"parallelism.default": 0}

    def test_or_with_other_types_is_a_type_error(self) -> None:
        with pytest.raises(TypeError):
            Configuration() | 3  # type: ignore[operator]

    def test_eq(self) -> None:
        assert Configuration({"parallelism.default": 2}) != Configuration()
        assert Configuration() != {}
        with pytest.raises(TypeError):
            hash(Configuration())

    def test_repr_masks_secrets(self) -> None:
        config = Configuration(
            {"security.ssl.internal.key-password": "hunter2", "parallelism.default": 2}
        )
        text = repr(config)
        assert "hunter2" not in text
        assert "'security.ssl.internal.key-password': '******'" in text
        assert "'parallelism.default': 2" in text
        assert config.get(SSL_INTERNAL_KEY_PASSWORD) == "hunter2"

    def test_pickles(self) -> None:
        config = Configuration({"parallelism.default": 2, "execution.target": "local"})
        assert pickle.loads(pickle.dumps(config)) == config


class TestUnknownKeys:
    def test_suggests_the_closest_key(self) -> None:
        with pytest.raises(ConfigurationError) as info:
            Configuration({"taskmanager.numberOfTaskSlot": 2})
        error = info.value
        assert error.key == "taskmanager.numberOfTaskSlot"
        assert error.value == 2
        assert error.reason == (
            "Unknown configuration key 'taskmanager.numberOfTaskSlot'; "
            "did you mean 'taskmanager.numberOfTaskSlots'?"
        )
        assert "taskmanager.numberOfTaskSlot=2" in str(error)

    def test_suggestion_ignores_case(self) -> None:
        with pytest.raises(
            ConfigurationError, match=r"did you mean 'taskmanager.numberOfTaskSlots'"
        ):
            Configuration({"taskmanager.numberoftaskslots": 2})

    def test_deprecated_lookalike_suggests_canonical_key(self) -> None:
        with pytest.raises(ConfigurationError, match=r"did you mean 'execution.buffer-timeout'"):
            Configuration().set("execution.buffer-timeout.intervall", 5)

    def test_no_suggestion_for_nonsense(self) -> None:
        with pytest.raises(ConfigurationError) as info:
            Configuration({"zzz": 1})
        assert info.value.reason == "Unknown configuration key 'zzz'"

    def test_lookup_option(self) -> None:
        assert cfg.lookup_option("execution.buffer-timeout.interval") is BUFFER_TIMEOUT
        with pytest.raises(ConfigurationError, match=r"did you mean 'taskmanager.data.port'"):
            cfg.lookup_option("taskmanager.data.prot")


class TestDeprecatedKeys:
    def test_alias_maps_to_canonical_key(self) -> None:
        config = Configuration({"execution.buffer-timeout.interval": "5 ms"})
        assert config.get(BUFFER_TIMEOUT) == 5
        assert config.to_dict() == {"execution.buffer-timeout": 5}
        assert config.contains("execution.buffer-timeout.interval")
        assert config.get_raw("execution.buffer-timeout.interval") == 5

    def test_old_network_memory_keys(self) -> None:
        config = Configuration(
            {
                "taskmanager.network.memory.fraction": "0.2",
                "taskmanager.network.memory.min": "16mb",
                "taskmanager.network.memory.max": "128mb",
            }
        )
        assert config.get(NETWORK_MEMORY_FRACTION) == 0.2
        assert config.get(NETWORK_MEMORY_MIN) == 16 * MIB
        assert config.get(NETWORK_MEMORY_MAX) == 128 * MIB

    @pytest.mark.parametrize("canonical_first", [True, False])
    def test_canonical_key_wins_within_one_source(self, canonical_first: bool) -> None:
        pairs = [("execution.buffer-timeout", 7), ("execution.buffer-timeout.interval", 9)]
        if not canonical_first:
            pairs.reverse()
        assert Configuration(dict(pairs)).get(BUFFER_TIMEOUT) == 7

    def test_later_set_wins(self) -> None:
        config = Configuration({"execution.buffer-timeout": 7})
        config.set("execution.buffer-timeout.interval", 9)
        assert config.get(BUFFER_TIMEOUT) == 9

    def test_error_names_the_key_as_given(self) -> None:
        with pytest.raises(ConfigurationError) as info:
            Configuration({"execution.buffer-timeout.interval": "soon"})
        assert info.value.key == "execution.buffer-timeout.interval"


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------


class TestEnvironment:
    def test_env_var_name(self) -> None:
        assert cfg.env_var_name("taskmanager.numberOfTaskSlots") == (
            "PENSTOCK_TASKMANAGER_NUMBEROFTASKSLOTS"
        )
        assert cfg.env_var_name("taskmanager.memory.segment-size") == (
            "PENSTOCK_TASKMANAGER_MEMORY_SEGMENT_SIZE"
        )

    def test_reads_prefixed_variables(self) -> None:
        config = Configuration.from_env(
            {
                "PENSTOCK_TASKMANAGER_NUMBEROFTASKSLOTS": "3",
                "PENSTOCK_TASKMANAGER_MEMORY_SEGMENT_SIZE": "64kb",
                "PENSTOCK_EXECUTION_BUFFER_TIMEOUT_INTERVAL": "1 s",
                "PATH": "/usr/bin",
                "PENSTOCKX": "ignored too",
            }
        )
        assert config.to_dict() == {
            "taskmanager.numberOfTaskSlots": 3,
            "taskmanager.memory.segment-size": 64 * KIB,
            "execution.buffer-timeout": 1000,
        }

    def test_every_key_has_a_variable(self) -> None:
        for option in OPTIONS.values():
            if option.default is None:
                continue
            value = (
                str(option.default).lower() if isinstance(option.default, bool) else option.default
            )
            config = Configuration.from_env({cfg.env_var_name(option.key): str(value)})
            assert config.to_dict() == {option.key: option.default}

    def test_unknown_variable_is_an_error_naming_it(self) -> None:
        with pytest.raises(ConfigurationError) as info:
            Configuration.from_env({"PENSTOCK_PARALLELISM_DEFAUL": "3"})
        assert info.value.key == "PENSTOCK_PARALLELISM_DEFAUL"
        assert info.value.value == "3"
        assert "did you mean 'PENSTOCK_PARALLELISM_DEFAULT'" in info.value.reason

    def test_penstocks_other_variables_are_not_keys_and_pass(self) -> None:
        from penstock.runtime.control import SECRET_ENV

        assert SECRET_ENV in cfg.OTHER_ENV_VARIABLES
        config = Configuration.from_env(
            {
                "PENSTOCK_CLUSTER_SECRET": "c2VjcmV0",
                "PENSTOCK_FLINK_BENCH": "/opt/flink-bench",
                "PENSTOCK_PARALLELISM_DEFAULT": "2",
            }
        )
        assert config.to_dict() == {"parallelism.default": 2}

    def test_bad_value_names_the_variable(self) -> None:
        with pytest.raises(ConfigurationError) as info:
            Configuration.from_env({"PENSTOCK_PARALLELISM_DEFAULT": "many"})
        assert info.value.key == "parallelism.default"
        assert info.value.value == "many"
        assert "PENSTOCK_PARALLELISM_DEFAULT" in str(info.value)

    def test_canonical_variable_wins_over_deprecated(self) -> None:
        config = Configuration.from_env(
            {
                "PENSTOCK_EXECUTION_BUFFER_TIMEOUT_INTERVAL": "9",
                "PENSTOCK_EXECUTION_BUFFER_TIMEOUT": "7",
            }
        )
        assert config.get(BUFFER_TIMEOUT) == 7

    def test_defaults_to_os_environ(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in list(os.environ):
            if name.startswith(cfg.ENV_PREFIX):
                monkeypatch.delenv(name)
        monkeypatch.setenv("PENSTOCK_PARALLELISM_DEFAULT", "6")
        assert Configuration.from_env().get(PARALLELISM_DEFAULT) == 6


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


class TestFile:
    def test_reads_key_value_lines(self, tmp_path: Path) -> None:
        path = write(
            tmp_path / "penstock.yaml",
            "# penstock settings\n"
            "\n"
            "parallelism.default: 4\n"
            "   taskmanager.memory.segment-size :  64 kb   # bigger buffers\n"
            "taskmanager.host: ::1\n"
            "security.ssl.internal.key-password: 'pa#ss word'\n"
            'security.ssl.internal.keystore: "/etc/penstock/tm.pem"\n'
            "  # indented comment\n"
            "execution.buffer-timeout.interval: 10ms\n"
            "parallelism.default: 5\n",
        )
        config = Configuration.from_file(path)
        assert config.to_dict() == {
            "parallelism.default": 5,
            "taskmanager.memory.segment-size": 64 * KIB,
            "taskmanager.host": "::1",
            "security.ssl.internal.key-password": "pa#ss word",
            "security.ssl.internal.keystore": "/etc/penstock/tm.pem",
            "execution.buffer-timeout": 10,
        }
        assert Configuration.from_file(str(path)) == config

    def test_empty_file(self, tmp_path: Path) -> None:
        assert Configuration.from_file(write(tmp_path / "c.yaml", "")) == Configuration()

    @pytest.mark.parametrize("line", ["parallelism.default 4", "taskmanager:", ": 4", "x"])
    def test_bad_line_names_the_line(self, tmp_path: Path, line: str) -> None:
        path = write(tmp_path / "c.yaml", f"# header\nparallelism.default: 2\n{line}\n")
        with pytest.raises(ConfigurationError) as info:
            Configuration.from_file(path)
        assert info.value.key == f"{path}:3"
        assert info.value.value == line
        assert "line 3" in str(info.value)

    def test_bad_value_names_key_value_and_line(self, tmp_path: Path) -> None:
        path = write(tmp_path / "c.yaml", "parallelism.default: 2\ntaskmanager.data.port: 70000\n")
        with pytest.raises(ConfigurationError) as info:
            Configuration.from_file(path)
        assert info.value.key == "taskmanager.data.port"
        assert info.value.value == "70000"
        assert f"in {path}, line 2" in info.value.reason

    def test_unknown_key_names_the_line(self, tmp_path: Path) -> None:
        path = write(tmp_path / "c.yaml", "taskmanager.numberOfTaskSlot: 2\n")
        with pytest.raises(ConfigurationError, match=r"did you mean .*line 1"):
            Configuration.from_file(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            Configuration.from_file(tmp_path / "missing.yaml")


class TestDynamicProperties:
    def test_reads_key_value_items(self) -> None:
        config = Configuration.from_dynamic_properties(
            [
                "parallelism.default=3",
                " execution.target = local ",
                "security.ssl.internal.key-password=a=b",
            ]
        )
        assert config.to_dict() == {
            "parallelism.default": 3,
            "execution.target": "local",
            "security.ssl.internal.key-password": "a=b",
        }

    @pytest.mark.parametrize("item", ["parallelism.default", "=3", ""])
    def test_malformed_item(self, item: str) -> None:
        with pytest.raises(ConfigurationError, match="expected a 'key=value' dynamic property"):
            Configuration.from_dynamic_properties([item])

    def test_bad_value(self) -> None:
        with pytest.raises(ConfigurationError, match="-D") as info:
            Configuration.from_dynamic_properties(["parallelism.default=0"])
        assert info.value.key == "parallelism.default"
        assert info.value.value == "0"


class TestLoad:
    def test_file_then_env_then_dynamic(self, tmp_path: Path) -> None:
        path = write(
            tmp_path / "c.yaml",
            "parallelism.default: 1\ntaskmanager.numberOfTaskSlots: 1\n"
            "taskmanager.data.port: 1000\nexecution.target: local\n",
        )
        environ = {
            "PENSTOCK_PARALLELISM_DEFAULT": "2",
            "PENSTOCK_TASKMANAGER_NUMBEROFTASKSLOTS": "2",
            "PENSTOCK_TASKMANAGER_DATA_PORT": "2000",
        }
        dynamic = ["parallelism.default=3", "taskmanager.data.port=3000"]
        config = Configuration.load(path, environ, dynamic)
        assert config.get(PARALLELISM_DEFAULT) == 3
        assert config.get(DATA_PORT) == 3000
        assert config.get(NUMBER_OF_TASK_SLOTS) == 2
        assert config.get(EXECUTION_TARGET) == "local"

    def test_deprecated_key_in_a_higher_layer_wins(self, tmp_path: Path) -> None:
        path = write(tmp_path / "c.yaml", "execution.buffer-timeout: 100\n")
        config = Configuration.load(path, {}, ["execution.buffer-timeout.interval=5"])
        assert config.get(BUFFER_TIMEOUT) == 5

    def test_nothing(self) -> None:
        assert Configuration.load(environ={}) == Configuration()


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class TestErrors:
    def test_configuration_error_is_a_value_error(self) -> None:
        with pytest.raises(ConfigurationError) as info:
            Configuration({"parallelism.default": "x"})
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, PenstockError)

    @pytest.mark.parametrize(
        "make",
        [
            lambda: Configuration({"taskmanager.numberOfTaskSlot": 2}),
            lambda: Configuration({"taskmanager.memory.segment-size": "33kb"}),
            lambda: Configuration.from_env({"PENSTOCK_NOPE": "1"}),
        ],
    )
    def test_errors_pickle_with_key_and_value(self, make: Callable[[], object]) -> None:
        with pytest.raises(ConfigurationError) as info:
            make()
        error = info.value
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is ConfigurationError
        assert (copy.key, copy.value, copy.reason) == (error.key, error.value, error.reason)
        assert str(copy) == str(error)


# --------------------------------------------------------------------------------------
# Derived settings
# --------------------------------------------------------------------------------------


class TestMaxParallelism:
    @pytest.mark.parametrize(
        ("parallelism", "expected"),
        [(1, 128), (85, 128), (86, 256), (100, 256), (1000, 2048), (21846, 32768), (30000, 32768)],
    )
    def test_flink_values(self, parallelism: int, expected: int) -> None:
        assert cfg.compute_default_max_parallelism(parallelism) == expected

    @given(st.integers(1, 100_000))
    def test_properties(self, parallelism: int) -> None:
        result = cfg.compute_default_max_parallelism(parallelism)
        assert 128 <= result <= 32768
        assert result & (result - 1) == 0
        wanted = parallelism + parallelism // 2
        assert result >= wanted or result == 32768
        assert result == 128 or result // 2 < wanted

    def test_rejects_zero(self) -> None:
        with pytest.raises(ValueError, match="at least 1"):
            cfg.compute_default_max_parallelism(0)

    def test_resolve(self) -> None:
        assert cfg.resolve_max_parallelism(Configuration({"parallelism.default": 100})) == 256
        assert cfg.resolve_max_parallelism(Configuration(), parallelism=1000) == 2048
        explicit = Configuration({"pipeline.max-parallelism": 64})
        assert cfg.resolve_max_parallelism(explicit, parallelism=64) == 64
        with pytest.raises(ConfigurationError, match="greater than or equal to the parallelism"):
            cfg.resolve_max_parallelism(explicit, parallelism=65)


class TestNetworkMemory:
    def test_default_is_the_minimum(self) -> None:
        # 0.1 x 640 mb = 64 mb, exactly the minimum.
        assert cfg.network_memory_bytes(Configuration()) == 64 * MIB

    def test_fraction_of_flink_memory(self) -> None:
        config = Configuration(
            {"taskmanager.memory.flink.size": "2 gb", "taskmanager.memory.network.fraction": 0.25}
        )
        assert cfg.network_memory_bytes(config) == 512 * MIB

    def test_clamped_to_min_and_max(self) -> None:
        small = Configuration({"taskmanager.memory.flink.size": "100 mb"})
        assert cfg.network_memory_bytes(small) == 64 * MIB
        big = Configuration({"taskmanager.memory.flink.size": "100 gb"})
        assert cfg.network_memory_bytes(big) == GIB
        fixed = Configuration(
            {"taskmanager.memory.network.min": "8 mb", "taskmanager.memory.network.max": "8 mb"}
        )
        assert cfg.network_memory_bytes(fixed) == 8 * MIB

    def test_min_above_max_names_both_keys(self) -> None:
        config = Configuration(
            {"taskmanager.memory.network.min": "2 gb", "taskmanager.memory.network.max": "1 gb"}
        )
        with pytest.raises(ConfigurationError) as info:
            cfg.network_memory_bytes(config)
        assert info.value.key == "taskmanager.memory.network.min"
        assert info.value.value == 2 * GIB
        assert "taskmanager.memory.network.max" in info.value.reason
        assert "2 gb" in info.value.reason and "1 gb" in info.value.reason


class TestHeartbeatTimeout:
    def test_default_and_equal_to_the_interval(self) -> None:
        assert cfg.heartbeat_timeout_ms(Configuration()) == 50_000
        config = Configuration({"heartbeat.interval": "2 s", "heartbeat.timeout": "2 s"})
        assert cfg.heartbeat_timeout_ms(config) == 2000

    def test_shorter_than_the_interval_names_both_keys(self) -> None:
        # Every peer would count as lost between two of its heartbeats.
        config = Configuration({"heartbeat.timeout": "800 ms"})
        with pytest.raises(ConfigurationError) as info:
            cfg.heartbeat_timeout_ms(config)
        assert info.value.key == "heartbeat.timeout"
        assert info.value.value == 800
        assert info.value.reason == (
            "heartbeat.timeout (800 ms) must not be below heartbeat.interval (10 s)"
        )

    def test_a_job_manager_refuses_it(self) -> None:
        from penstock.runtime.jobmanager import JobManager

        with pytest.raises(ConfigurationError, match=r"heartbeat\.timeout"):
            JobManager(Configuration({"heartbeat.timeout": "800 ms"}))


class TestShuffleOptions:
    def test_defaults(self) -> None:
        options = ShuffleOptions.from_configuration(Configuration())
        assert options == ShuffleOptions(
            segment_size=32 * KIB,
            total_buffers=2048,
            buffers_per_channel=2,
            floating_buffers_per_gate=8,
            max_buffers_per_channel=10,
            max_overdraft_buffers_per_gate=5,
            buffers_request_timeout_ms=30_000,
            request_backoff_initial_ms=100,
            request_backoff_max_ms=10_000,
            partition_request_timeout_ms=10_000,
            buffer_timeout_ms=100,
            data_port=0,
            host="127.0.0.1",
            ssl_enabled=False,
            retries=0,
            connect_timeout_ms=120_000,
            detailed_metrics=False,
        )

    def test_from_configuration(self) -> None:
        config = Configuration(
            {
                "taskmanager.memory.segment-size": "64 kb",
                "taskmanager.memory.network.min": "16 mb",
                "taskmanager.memory.network.max": "16 mb",
                "taskmanager.network.memory.buffers-per-channel": 4,
                "taskmanager.network.memory.floating-buffers-per-gate": "16",
                "execution.buffer-timeout": "0",
                "taskmanager.data.port": "7000",
                "taskmanager.host": "10.0.0.2",
                "taskmanager.network.netty.client.connectTimeoutSec": 5,
                "taskmanager.network.retries": 2,
            }
        )
        options = ShuffleOptions.from_configuration(config)
        assert options.segment_size == 64 * KIB
        assert options.total_buffers == 256
        assert options.buffers_per_channel == 4
        assert options.floating_buffers_per_gate == 16
        assert options.buffer_timeout_ms == 0
        assert (options.host, options.data_port) == ("10.0.0.2", 7000)
        assert options.connect_timeout_ms == 5000
        assert options.retries == 2

    @pytest.mark.parametrize(
        ("internal", "data", "expected"),
        [(False, True, False), (True, True, True), (True, False, False), (False, False, False)],
    )
    def test_ssl_needs_both_switches(self, internal: bool, data: bool, expected: bool) -> None:
        config = Configuration(
            {"security.ssl.internal.enabled": internal, "taskmanager.data.ssl.enabled": data}
        )
        assert ShuffleOptions.from_configuration(config).ssl_enabled is expected

    def test_backoff_initial_above_max_names_both_keys(self) -> None:
        config = Configuration(
            {
                "taskmanager.network.request-backoff.initial": "20 s",
                "taskmanager.network.request-backoff.max": "10 s",
            }
        )
        with pytest.raises(ConfigurationError) as info:
            ShuffleOptions.from_configuration(config)
        assert info.value.key == "taskmanager.network.request-backoff.initial"
        assert "taskmanager.network.request-backoff.max" in info.value.reason

    @pytest.mark.parametrize(
        ("settings", "blamed", "reason"),
        [
            (
                {"heartbeat.interval": "1 min"},
                "heartbeat.interval",
                "heartbeat.interval (1 min) must not exceed heartbeat.timeout (50 s)",
            ),
            (
                {"heartbeat.interval": "1 min", "heartbeat.timeout": "30 s"},
                "heartbeat.interval",
                "heartbeat.interval (1 min) must not exceed heartbeat.timeout (30 s)",
            ),
            (
                {"taskmanager.network.request-backoff.max": "50 ms"},
                "taskmanager.network.request-backoff.max",
                "taskmanager.network.request-backoff.max (50 ms) must not be below "
                "taskmanager.network.request-backoff.initial (100 ms)",
            ),
            (
                {"taskmanager.memory.network.max": "32 mb"},
                "taskmanager.memory.network.max",
                "taskmanager.memory.network.max (32 mb) must not be below "
                "taskmanager.memory.network.min (64 mb)",
            ),
        ],
    )
    def test_a_conflict_names_the_key_that_was_set(
        self, settings: dict[str, object], blamed: str, reason: str
    ) -> None:
        """Not the other key of the pair, at a default its user never chose."""
        config = Configuration(settings)
        with pytest.raises(ConfigurationError) as info:
            ShuffleOptions.from_configuration(config)
            cfg.heartbeat_timeout_ms(config)
        assert info.value.key == blamed
        assert info.value.reason == reason

    def test_network_min_above_max_fails(self) -> None:
        config = Configuration({"taskmanager.memory.network.min": "2 gb"})
        with pytest.raises(ConfigurationError, match=r"taskmanager.memory.network.max"):
            ShuffleOptions.from_configuration(config)

    def test_direct_construction_validates(self) -> None:
        defaults = ShuffleOptions.from_configuration(Configuration())
        with pytest.raises(ConfigurationError, match="power of two"):
            dataclasses.replace(defaults, segment_size=1000)
        with pytest.raises(ConfigurationError, match="must not be negative"):
            dataclasses.replace(defaults, total_buffers=-1)
        small = dataclasses.replace(defaults, segment_size=64, total_buffers=4)
        assert small.segment_size == 64

    def test_frozen(self) -> None:
        options = ShuffleOptions.from_configuration(Configuration())
        with pytest.raises(dataclasses.FrozenInstanceError):
            options.total_buffers = 1  # type: ignore[misc]


def test_keystore_accepts_path_objects(tmp_path: Path) -> None:
    config = Configuration({"security.ssl.internal.keystore": tmp_path / "tm.pem"})
    assert config.get(SSL_INTERNAL_KEYSTORE) == os.fspath(tmp_path / "tm.pem")
