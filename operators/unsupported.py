"""Data-Juicer's general-text operators that DataMate does not run yet, with the reason.

`datamate ops list` shows them, and a recipe that names one fails with the reason instead of "unknown".
"""

_LLM = "needs a large language model (API or local weights); use the synthesis/evaluation stages instead"
_NEURAL = "needs a neural model that no package here ships"

NOT_SUPPORTED = {
    "ray_basic_deduplicator": "Ray-only exact dedup with a Redis backend; document_deduplicator runs on Ray",
    "ray_document_deduplicator": "use document_deduplicator with executor_type: ray",
    "in_context_influence_filter": _LLM,
    "instruction_following_difficulty_filter": _LLM,
    "llm_analysis_filter": _LLM,
    "llm_difficulty_score_filter": _LLM,
    "llm_perplexity_filter": _LLM,
    "llm_quality_score_filter": _LLM,
    "llm_task_relevance_filter": _LLM,
    "text_action_filter": "needs a spaCy pipeline model (download)",
    "text_entity_dependency_filter": "needs a spaCy pipeline model (download)",
    "text_embd_similarity_filter": "needs an embedding model endpoint; the indexing stage embeds",
    "text_pair_similarity_filter": _NEURAL + " (CLIP)",
    "calibrate_qa_mapper": _LLM, "calibrate_query_mapper": _LLM, "calibrate_response_mapper": _LLM,
    "dialog_intent_detection_mapper": _LLM, "dialog_sentiment_detection_mapper": _LLM,
    "dialog_sentiment_intensity_mapper": _LLM, "dialog_topic_detection_mapper": _LLM,
    "extract_entity_attribute_mapper": _LLM, "extract_entity_relation_mapper": _LLM, "extract_event_mapper": _LLM,
    "extract_keyword_mapper": _LLM, "extract_nickname_mapper": _LLM, "extract_support_text_mapper": _LLM,
    "generate_qa_from_examples_mapper": _LLM, "generate_qa_from_text_mapper": _LLM,
    "optimize_prompt_mapper": _LLM, "optimize_qa_mapper": _LLM, "optimize_query_mapper": _LLM,
    "optimize_response_mapper": _LLM, "pair_preference_mapper": _LLM, "relation_identity_mapper": _LLM,
    "sentence_augmentation_mapper": _LLM,
    "query_intent_detection_mapper": _NEURAL, "query_sentiment_detection_mapper": _NEURAL,
    "query_topic_detection_mapper": _NEURAL,
    "nlpaug_en_mapper": "augmentation multiplies records; the runner keeps one output per input record",
    "nlpcda_zh_mapper": "augmentation multiplies records; the runner keeps one output per input record",
    "download_file_mapper": "downloads at run time; collect files with a `web` source instead",
    "extract_tables_from_html_mapper": "not implemented yet",
}
