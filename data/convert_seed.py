"""Convert the seed study's prompt sets (JSON lists of {prompt, answer, token_len, num_chunks})
into this project's JSONL prompt sets, dropping exact duplicates and empty or invisible
references. Usage: python data/convert_seed.py SEED_DIR OUT_DIR  (prints what it dropped)."""

import hashlib
import json
import sys
import unicodedata
from pathlib import Path

from gptscore_eval.records import write_records

# seed file -> (our set name, id prefix)
SEED_SETS = {
    "qa_for_accuracy_256.json": ("qa_256", "qa256"),
    "qa_for_accuracy_512.json": ("qa_512", "qa512"),
    "longer_qa_for_benchmarking_performance.json": ("qa_long", "qalong"),
}


def visible(text: str) -> bool:
    """True when the text has a character that renders (not whitespace, control or format)."""
    return any(not ch.isspace() and unicodedata.category(ch)[0] not in "CZ" for ch in text)


def convert(items: list[dict], prefix: str) -> tuple[list[dict], list[str]]:
    records, dropped, seen = [], [], set()
    for index, item in enumerate(items):
        exact = json.dumps(item, sort_keys=True)
        if exact in seen:
            dropped.append(f"item {index}: exact duplicate of an earlier item")
            continue
        seen.add(exact)
        if not visible(item.get("answer", "")):
            dropped.append(f"item {index}: empty or invisible reference")
            continue
        # The id hashes the prompt, so it stays the same if the seed file is reordered.
        digest = hashlib.sha1(item["prompt"].encode("utf-8")).hexdigest()[:10]
        records.append({
            "id": f"{prefix}-{digest}",
            "prompt": item["prompt"],
            "reference": item["answer"],
            "token_len": item["token_len"],
            "num_chunks": item["num_chunks"],
        })
    return records, dropped


def main(seed_dir: str, out_dir: str) -> None:
    for filename, (name, prefix) in SEED_SETS.items():
        items = json.loads((Path(seed_dir) / filename).read_text(encoding="utf-8"))
        records, dropped = convert(items, prefix)
        write_records(Path(out_dir) / f"{name}.jsonl", "prompts", records)
        print(f"{filename}: {len(items)} items -> {name}.jsonl: {len(records)} records")
        for reason in dropped:
            print(f"  dropped {reason}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
