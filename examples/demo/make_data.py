"""Generate the shipped demo dataset (run once; the .jsonl files are committed).

The task — reverse or repeat a short list of words — cannot be answered by an untrained model, and a tiny model
learns the rule (not the examples) in a couple of CPU minutes, so the held-out score shows real learning:
test prompts are word lists never seen in training.

    python examples/demo/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "red blue green yellow black white orange purple cat dog fox bird fish horse lion tiger apple pear "
    "plum grape lemon mango sun moon star rain snow wind tree rock river hill"
).split()
SYSTEM = "You follow word-list instructions exactly."


def make_example(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 5))
    if rng.random() < 0.5:
        return "Reverse: " + " ".join(words), " ".join(reversed(words))
    return "Repeat: " + " ".join(words), " ".join(words)


def main() -> None:
    rng = random.Random(1234)
    here = Path(__file__).parent
    seen: set[str] = set()
    splits = {"train": 3000, "test": 100}
    for split, count in splits.items():
        rows = []
        while len(rows) < count:
            prompt, answer = make_example(rng)
            if prompt in seen:  # test prompts never appear in training
                continue
            seen.add(prompt)
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            if split == "train" and len(rows) % 3 == 0:
                messages.insert(0, {"role": "system", "content": SYSTEM})
            rows.append({"messages": messages})
        with (here / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows)} rows to {here / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()
