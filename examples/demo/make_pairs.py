"""Generate the shipped preference pairs for the DPO demo (run once; pairs.jsonl is committed).

The demo model (`make demo`) answers "Reverse: a b c" and "Repeat: a b c" with the words separated by spaces.
These pairs prefer the same words separated by commas: chosen "c, b, a", rejected "c b a" — a preference the SFT
data never taught, so the SFT model starts by preferring the rejected answers, and DPO has to turn it around.

    python examples/demo/make_pairs.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from make_data import WORDS


def main() -> None:
    rng = random.Random(4321)
    rows = []
    seen: set[str] = set()
    while len(rows) < 600:
        words = rng.sample(WORDS, rng.randint(3, 5))
        task = rng.choice(["Reverse", "Repeat"])
        prompt = f"{task}: " + " ".join(words)
        if prompt in seen:
            continue
        seen.add(prompt)
        answer = list(reversed(words)) if task == "Reverse" else words
        rows.append({"prompt": [{"role": "user", "content": prompt}], "chosen": ", ".join(answer),
                     "rejected": " ".join(answer)})  # fmt: skip
    path = Path(__file__).parent / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} pairs to {path}")


if __name__ == "__main__":
    main()
