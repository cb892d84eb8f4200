"""The LLM check: a Hugging Face causal-LM folder against its MNN-LLM export, token by token.

    folders.py      what a folder is (Hugging Face model, MNN-LLM export, or neither)
    export.py       llmexport in a sandboxed child (no pip, no network); export_child.py its child side
    runtime.py      MNN.llm in a worker child: tokenize, greedy and teacher-forced logits;
                    runtime_child.py the functions the child runs
    reference.py    transformers: the reference's tokenizer, greedy continuation and logits
    figures.py      pure numpy: per-step figures, the llama.cpp-style summary, budgets
    tokenizer.py    the tokenizer and chat-template comparison
    weights.py      an export's weights against a fresh export's, layer by layer
    check.py        check_llm: the links, the verdict, the Report

Nothing heavy is imported by this package's modules at import time: torch, transformers and MNN
load inside the functions (and children) that need them.
"""
