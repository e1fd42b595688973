"""The bundled engine: a Llama-family model served with continuous batching over a paged
KV cache. Never imports gateway/, plugins/ or policies/.

    engine/         the async front (add_request -> deltas), the step loop, request
                    validation, stop rules, speculative decoding's step
    scheduler.py    waiting/running queues, token budget, chunked prefill, preemption
    blocks.py       paged KV blocks: free list, prefix cache, refcounts
    sequence.py     one sequence's tokens and blocks (these three: plain Python, no torch)
    request.py      a request as the engine tracks it; the deltas it streams
    runner.py       a scheduled batch -> flat tensors -> the model -> logits
    model.py        the Llama decoder (and its fused decode step); attention.py (paged,
                    pure PyTorch), linear.py (which matmul path), rope.py, int8_decode.py
    sampling_params.py, sampler.py   what a request asks; next-token selection
    metrics.py      Prometheus metrics, named as vLLM names them
    environment.py  the one place backend/ reads environment variables
    loading/        GGUF and safetensors files, dequantization, the bundled model
    tokenizer/      text <-> ids, chat templates, streamed detokenization, stop strings
    speculative/    proposers, acceptance, step cost, planner, verification
    quantized/      weights kept in GGUF's packed blocks (Q8_0/Q4_0/Q4_1), quantizing at load
    kernels/        C++ CPU kernels and their loader
"""
