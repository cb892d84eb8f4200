"""The LLM check: a Hugging Face causal-LM folder against its MNN-LLM export, token by token.

    folders.py      what a folder is (Hugging Face model, MNN-LLM export, or neither)
    export.py       llmexport in a sandboxed child (no pip, no network); export_child.py its child side
    runtime.py      MNN.llm in a worker child: tokenize, greedy and teacher-forced logits;
                    runtime_child.py the functions the child runs
    reference.py    transformers: the reference's tokenizer, greedy continuation and logits
    figures.py      pure numpy: per-step figures and the llama.cpp-style summary
    budget.py       budget clauses (kl_mean<=, kl_p99<=, top1>=, error<=) and the defaults
    links.py        one link: a candidate's logits against the reference's, judged by a budget
    tokenizer.py    the tokenizer and chat-template comparison
    weights.py      an export's weights against a fresh export's, layer by layer
    diagnose.py     the verdict of a failing export: conversion, runtime or compression
    check.py        check_llm: the runs, the tokenizer and pass verdicts, the Report
    text.py         --text: windows over a text, and the running figures of their scored positions
    text_check.py   check_text: the --text check, its reference (transformers or a saved file), its Report
    stored.py       the reference's --text logits saved (--save-outputs) and verified when loaded

Nothing heavy is imported by this package's modules at import time: torch, transformers and MNN
load inside the functions (and children) that need them.
"""
