"""The pure parts of a worker's start: which topics are led, which source topics the
group's assignment left out, the configs a topic is created with, the public URL."""

from __future__ import annotations

import faust
import pytest

from config import Settings
from streams.readiness import unassigned_topics
from streams.topics import TopicSpec, partitions_led, topic_spec


def metadata_topic(name: str, leaders: list[int], error_code: int = 0) -> dict[str, object]:
    """One topic of a Metadata answer as aiokafka's ``describe_topics`` gives it."""
    return {
        "error_code": error_code,
        "topic": name,
        "is_internal": False,
        "partitions": [{"error_code": 0, "partition": i, "leader": leader, "replicas": [1], "isr": [1]}
                       for i, leader in enumerate(leaders)],
    }


def test_partitions_led_counts_only_topics_with_a_leader_for_every_partition() -> None:
    described = [
        metadata_topic("jobs", [1, 1, 1, 1]),
        metadata_topic("requests", [1, -1, 1, 1]),  # partition 1 has no leader yet
        metadata_topic("updates", [], error_code=3),  # UNKNOWN_TOPIC_OR_PARTITION
        metadata_topic("someone-elses", [1]),
        metadata_topic("empty", []),
    ]
    assert partitions_led(described, ["jobs", "requests", "updates", "empty", "missing"]) == {"jobs": 4}


def test_unassigned_topics_reads_the_group_wide_assignment() -> None:
    sources = {"jobs": 4, "requests": 4, "updates": 2, "fetches": 4}
    distribution = {
        "http://a:6066": {"jobs": [0, 1], "requests": [0, 1, 2, 3], "updates": [0]},
        "http://b:6066": {"jobs": [2, 3], "updates": [1], "fetches": [0, 1, 2]},
    }
    # fetches[3] is nobody's; requests all on a, jobs split, updates split.
    assert unassigned_topics(sources, distribution) == ["fetches"]
    assert unassigned_topics(sources, {}) == ["fetches", "jobs", "requests", "updates"]
    distribution["http://b:6066"]["fetches"].append(3)
    assert unassigned_topics(sources, distribution) == []


def test_topic_spec_carries_the_configs_faust_would_create_it_with() -> None:
    app = faust.App("spec-test", broker="memory://", store="memory://")
    compacted = app.topic("t-compact", partitions=3, compacting=True, config={"segment.ms": 60000})
    both = app.topic("t-both", compacting=True, deleting=True, retention=3600.0)
    plain = app.topic("t-plain")
    assert topic_spec(compacted, default_partitions=8, default_replicas=1) == TopicSpec(
        "t-compact", 3, 1, {"cleanup.policy": "compact", "segment.ms": "60000"})
    assert topic_spec(both, default_partitions=8, default_replicas=1) == TopicSpec(
        "t-both", 8, 1, {"cleanup.policy": "compact,delete", "retention.ms": "3600000"})
    spec = topic_spec(plain, default_partitions=4, default_replicas=1)
    assert spec == TopicSpec("t-plain", 4, 1, {})
    new = spec.new_topic()
    assert (new.name, new.num_partitions, new.replication_factor) == ("t-plain", 4, 1)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "http://127.0.0.1:6066"),
    ({"IMAGESTREAM_WEB_PORT": "7001"}, "http://127.0.0.1:7001"),
    ({"IMAGESTREAM_WEB_HOST": "127.0.0.2", "IMAGESTREAM_WEB_PORT": "7002"}, "http://127.0.0.2:7002"),
    ({"IMAGESTREAM_WEB_PORT": "7003", "IMAGESTREAM_CANONICAL_URL": "http://w3.internal:7003"},
     "http://w3.internal:7003"),
    ({"IMAGESTREAM_WEB_PORT": "7004", "IMAGESTREAM_API_URL": "https://images.example.com/"},
     "https://images.example.com"),
])
def test_public_url_follows_the_port_served_unless_api_url_says_otherwise(
    env: dict[str, str], expected: str
) -> None:
    assert Settings.from_env(env).public_url == expected
