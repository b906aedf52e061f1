"""DataMate for applications: the retrieval service (`datamate.service`, run by `datamate serve`) and LangChain
retrievers over it or over the in-process knowledge base (`datamate.retriever`)."""
