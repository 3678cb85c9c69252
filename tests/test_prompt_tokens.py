"""Router and simulated engines count a text prompt's tokens alike: the router places, meters
and records by its own count before the engine has said anything, so the two must agree."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
from test_router_service import Cluster, running_cluster

from voltana.engine.tokenizer import ToyTokenizer
from voltana.hardware import get_model
from voltana.services.router.validation import estimate_text_tokens

pytestmark = pytest.mark.integration

MODEL = "llama-3.1-8b"


@pytest.mark.unit
@pytest.mark.parametrize(
    "text",
    [
        "Say hello in five words",
        "user: Hello\nassistant:",
        "  spaced   out\ttabs\n\nand newlines  ",
        "a",
        "Supercalifragilisticexpialidocious!",
        "naïve café — 東京 tokens",
    ],
)
def test_the_routers_count_is_the_simulated_tokenizers(text: str) -> None:
    tokenizer = ToyTokenizer(get_model(MODEL).vocab_size)
    assert estimate_text_tokens(text, 4.0) == len(tokenizer.encode(text))


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with running_cluster(http_listen_address="127.0.0.1:0") as running:
        yield running


def placed_prompt_tokens(cluster: Cluster) -> float:
    """What the router counted at placement, summed over every request so far."""
    value = cluster.router.metrics_registry.get_sample_value("voltana_router_prompt_tokens_total")
    return value or 0.0


async def test_router_and_engine_agree_on_a_chat_and_a_text_prompt(cluster: Cluster) -> None:
    url = cluster.router.http_url
    assert url is not None
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as api:
        reply = await api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=3
        )
    assert reply.usage is not None  # the engine's count
    assert placed_prompt_tokens(cluster) == reply.usage.prompt_tokens == 7
    result = await cluster.client.generate(
        "Say hello in five words", max_new_tokens=3, stream=False
    )
    assert result.summary.prompt_tokens == 7
    assert placed_prompt_tokens(cluster) == 7 + 7
