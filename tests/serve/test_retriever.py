"""The LangChain retrievers: over the HTTP service and in process, and in a small RAG chain with the packaged
model served OpenAI-style on loopback."""

import asyncio

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_openai import ChatOpenAI

from datamate.retriever import DatamateRetriever, DatamateRetrieverError, KnowledgeBaseRetriever
from tests.llm.conftest import SERVED_MODEL
from tests.serve.conftest import READER_KEY, SCOPED_KEY, SOURCE_VERSION

SSH = "Which port does the OpenSSH server listen on?"


def test_http_retriever_gives_documents(served):
    url, _ = served
    retriever = DatamateRetriever(url=url, api_key=READER_KEY, dataset="docs", k=4, per_doc=1)
    documents = retriever.invoke(SSH)
    assert [d.metadata["doc_id"] for d in documents][0] == "ssh" and len(documents) == 4
    assert len({d.metadata["doc_id"] for d in documents}) == 4
    top = documents[0]
    assert "port 22" in top.page_content and top.metadata["source_uri"] == "file:///ssh.txt"
    assert top.metadata["rank"] == 1 and 0 < top.metadata["score"] <= 1 and "position" in top.metadata
    assert READER_KEY not in repr(retriever)  # a SecretStr


def test_http_retriever_async_and_errors(served):
    url, _ = served
    filtered = DatamateRetriever(url=url, api_key=READER_KEY, dataset="docs", k=3, filter={"doc_id": "apt"})
    assert {d.metadata["doc_id"] for d in asyncio.run(filtered.ainvoke("network mirrors"))} == {"apt"}
    with pytest.raises(DatamateRetrieverError, match="answered 403: key 'scoped' may not read dataset 'other'"):
        DatamateRetriever(url=url, api_key=SCOPED_KEY, dataset="other").invoke("mail")


def test_in_process_retriever(lite, monkeypatch):
    monkeypatch.setenv("DATAMATE_MILVUS_URI", lite.path)
    retriever = KnowledgeBaseRetriever(dataset="docs", k=2, mode="dense")
    documents = retriever.invoke(SSH)
    assert documents[0].metadata["doc_id"] == "ssh" and documents[0].metadata["rank_score"] > 0.3
    assert retriever.invoke("GRUB kernel parameters")[0].metadata["doc_id"] == "boot"


def test_retriever_in_a_chain_with_the_packaged_model(served, llm_server):
    url, _ = served
    retriever = DatamateRetriever(url=url, api_key=READER_KEY, dataset="docs", k=2, per_doc=1)
    prompts = []
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer the question from the context only, in one short sentence."),
        ("human", "Context:\n{context}\n\nQuestion: {question}"),
    ])
    chain = (
        {"context": retriever | RunnableLambda(lambda docs: "\n\n".join(d.page_content for d in docs)),
         "question": RunnablePassthrough()}
        | prompt
        | RunnableLambda(lambda value: prompts.append(value.to_string()) or value)
        | ChatOpenAI(base_url=llm_server, model=SERVED_MODEL, api_key="not-needed", max_tokens=40, temperature=0)
        | StrOutputParser()
    )
    answer = chain.invoke(SSH)
    assert "listens on port 22" in prompts[0] and SSH in prompts[0]  # the retrieved chunk reached the model
    assert answer.strip(), "the model answered nothing"
    print(f"answer: {answer!r}, dataset version {SOURCE_VERSION}")
