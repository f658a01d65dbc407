"""The model a search is for, under the plain HF Trainer, as DeepSpeed's autotuner launches it:
`deepspeed --autotuning tune --num_gpus N benchmarks/autotune_train.py --deepspeed ds.json
--per_device_train_batch_size M --gradient_accumulation_steps G ...` (benchmarks/autotuner.py
writes that command). The model comes from the pipeline's model group (env ZEROSWEEP_MODEL, e.g.
llama_1b), the data are random tokens of ZEROSWEEP_SEQ (1024), as in the pipeline's benchmarks.
"""

import os

from transformers import HfArgumentParser, Trainer, TrainingArguments

from pipeline.check import compose
from pipeline.rank import data, model, tokenizer


def main() -> None:
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses()
    seq = int(os.environ.get("ZEROSWEEP_SEQ", "1024"))
    name = os.environ.get("ZEROSWEEP_MODEL", "llama_1b")
    cfg = compose.compose_point([f"model={name}", "data=random_tokens", f"data.seq_len={seq}"])
    net = model.build(cfg, model.model_config(cfg, tokenizer.BYTE_VOCAB))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    samples = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * world
    tokens = data.builtin(cfg.data, net.config.vocab_size, samples)
    Trainer(model=net, args=args, train_dataset=tokens).train()


if __name__ == "__main__":
    main()
