#!/bin/sh
# The Llama 2 documentation page's chat command line, with `transformers` replaced by `llamacpu`:
# transformers' flag names are accepted (--attn_implementation changes nothing).
#
#     sh examples/transformers/chat_cli.sh [MODEL]       # default: the embedded SmolLM2-135M-Instruct
MODEL=${1:-$(python -c "import llamacpu; print(llamacpu.default_model())")}
exec llamacpu chat --model_name_or_path "$MODEL" --torch_dtype auto --attn_implementation sdpa
