"""Word count: the built-in demo of ``penstock run``.

Generated sentences are split into words, keyed by word and counted with a running
``sum``, on two parallel subtasks per operator::

    Source: Sentences -> Flat Map -> Map  ==hash==>  Keyed Aggregation -> Sink: Top Words

Every word crosses the network stack once (the keyed exchange); the sink keeps the
latest count of each of its words and reports its ten most frequent at the end.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from typing import Final

from penstock.api.environment import StreamExecutionEnvironment
from penstock.config import Configuration
from penstock.examples.reporting import ReportingSink

__all__ = ["DEFAULT_SENTENCES", "JOB_NAME", "TopWords", "build", "describe_results", "main"]

JOB_NAME: Final = "word count"

DEFAULT_SENTENCES: Final = 400_000
"""Sentences of the stream: 4 million words, some seconds on two TaskManagers."""

WORDS_PER_SENTENCE: Final = 10
TOP: Final = 10

_TEXT: Final = """
    the water flows from the reservoir through the penstock to the turbine and the
    pressure of the water in the penstock turns the runner of the turbine while the gate
    at the intake keeps the flow bounded so that a slow turbine holds the water back in
    the reservoir instead of flooding the valley below the dam where the river runs on
    past the mill and the bridge toward the sea
    """
VOCABULARY: Final = tuple(dict.fromkeys(_TEXT.split()))
"""The distinct words; the earlier a word comes, the more often it occurs (Zipf)."""

_TABLE_SIZE: Final = 4099


def _sentence_table() -> tuple[tuple[str, ...], ...]:
    # Drawn once per process and indexed by sentence number: drawing millions of
    # words at random would cost more than the job that counts them.
    weights = [1.0 / rank for rank in range(1, len(VOCABULARY) + 1)]
    draw = random.Random(20_240_917).choices
    return tuple(tuple(draw(VOCABULARY, weights, k=WORDS_PER_SENTENCE)) for _ in range(_TABLE_SIZE))


SENTENCES: Final = _sentence_table()


def sentence_words(number: int) -> tuple[str, ...]:
    """The words of sentence ``number`` (the same number always gives the same words)."""
    return SENTENCES[number % _TABLE_SIZE]


def word_key(pair: tuple[str, int]) -> str:
    """The word of a ``(word, count)`` pair."""
    return pair[0]


def one(word: str) -> tuple[str, int]:
    """``(word, 1)``."""
    return (word, 1)


def _count(pair: tuple[str, int]) -> int:
    return pair[1]


class TopWords(ReportingSink):
    """Keeps the running count of each word of its subtask; reports the top ones."""

    def __init__(self, top: int = TOP) -> None:
        super().__init__()
        self.top = top
        self.counts: dict[str, int] = {}

    def invoke(self, value: object) -> None:
        """Takes a ``(word, running count)``."""
        if isinstance(value, tuple):
            self.counts[value[0]] = value[1]

    def report(self) -> list[object]:
        """This subtask's most frequent words; keys are split, so the union holds the top."""
        top: list[tuple[str, int]] = heapq.nlargest(self.top, self.counts.items(), key=_count)
        return list(top)


def build(env: StreamExecutionEnvironment, sentences: int = DEFAULT_SENTENCES) -> None:
    """Adds the word count over ``sentences`` generated sentences to ``env``."""
    (
        env.from_sequence(1, sentences)
        .name("Sentences")
        .flat_map(sentence_words, output_type=str)
        .map(one)
        .key_by(word_key)
        .sum(1)
        .add_sink(TopWords())
        .name("Top Words")
    )


def top_words(records: Sequence[object], top: int = TOP) -> list[tuple[str, int]]:
    """The ``top`` most frequent words of the sinks' reports."""
    pairs = [record for record in records if isinstance(record, tuple) and len(record) == 2]
    return heapq.nlargest(top, pairs, key=lambda pair: pair[1])


def describe_results(records: Sequence[object]) -> str | None:
    """``Top words: the 1,234 · water 567 · ...``, or None without reports."""
    words = top_words(records)
    if not words:
        return None
    return "Top words: " + " · ".join(f"{word} {count:,}" for word, count in words)


def main(config: Configuration | None = None) -> None:
    """Runs the word count on a mini-cluster and prints the top words."""
    from penstock.runtime.client import observe_jobs

    env = StreamExecutionEnvironment.get_execution_environment(
        Configuration({"parallelism.default": 2}) | (config or Configuration())
    )
    build(env)
    records: list[object] = []
    with observe_jobs(lambda update: None, on_records=records.extend):
        result = env.execute(JOB_NAME)
    print(describe_results(records) or "no words")
    print(f"{JOB_NAME}: {result.get_net_runtime()} ms")


if __name__ == "__main__":
    main()
