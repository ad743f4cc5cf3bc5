//! Hugging Face Inference API / TGI `generate`.
