"""LangChain's ChatOpenAI and ChatOllama, configured as WIRE.md §5 describes."""

from __future__ import annotations

from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from tests.e2e.conftest import Deployment


async def test_chat_openai(deployment: Deployment) -> None:
    key = await deployment.key(models=["llama3.2", "all-minilm"])
    chat = ChatOpenAI(base_url=deployment.url + "/v1", api_key=key, model="llama3.2")  # type: ignore[arg-type]
    # LangChain sends tiktoken token arrays unless told not to (WIRE.md trap 6).
    embeddings = OpenAIEmbeddings(
        base_url=deployment.url + "/v1",
        api_key=key,  # type: ignore[arg-type]
        model="all-minilm",
        check_embedding_ctx_length=False,
    )
    try:
        answer = chat.invoke("Hello there")
        assert isinstance(answer.content, str)
        assert answer.content
        assert answer.usage_metadata is not None
        assert answer.usage_metadata["output_tokens"] == 12
        streamed = "".join(str(chunk.content) for chunk in chat.stream("Hello there"))
        assert streamed == answer.content
        assert len(embeddings.embed_query("hello")) == 384
    finally:
        # LangChain never closes the SDK clients it builds.
        chat.root_client.close()
        embeddings.client._client.close()


async def test_chat_ollama(deployment: Deployment) -> None:
    key = await deployment.key(models=["llama3.2"])
    chat = ChatOllama(
        base_url=deployment.url,
        model="llama3.2",
        client_kwargs={"headers": {"Authorization": f"Bearer {key}"}},
    )
    try:
        answer = chat.invoke("Hello there")
        assert isinstance(answer.content, str)
        assert answer.content
        streamed = "".join(str(chunk.content) for chunk in chat.stream("Hello there"))
        assert streamed == answer.content
    finally:
        chat._client._client.close()
