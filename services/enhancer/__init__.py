"""The enhancer: prompt templates, the Qwen instruct model, the enhance stage
of the `*_enhanced` job types, enhancement analytics and the chat playground."""
