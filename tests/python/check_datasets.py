"""Loads a cai run directory with Hugging Face `datasets`, as a trainer would.

Usage: python check_datasets.py RUN_DIR EXPECTED_ROWS

Checks the shapes TRL documents for its trainers:
- SFTTrainer, conversational: a `messages` column of [{role, content}, ...]
  ending with the assistant turn;
- DPOTrainer, conversational with an explicit prompt: `prompt` (messages),
  `chosen` and `rejected` (each a list with one assistant message).
Exits non-zero with a message on any mismatch.
"""
import sys

from datasets import load_dataset

run_dir, expected = sys.argv[1], int(sys.argv[2])

sft = load_dataset("json", data_files=f"{run_dir}/sft.jsonl", split="train")
assert sft.num_rows == expected, (sft.num_rows, expected)
assert set(sft.column_names) == {"id", "messages"}, sft.column_names
for row in sft:
    roles = [m["role"] for m in row["messages"]]
    assert roles[-1] == "assistant" and roles[-2] == "user", roles
    assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])

pref = load_dataset("json", data_files=f"{run_dir}/preference.jsonl", split="train")
assert pref.num_rows == expected, (pref.num_rows, expected)
assert set(pref.column_names) == {"id", "prompt", "chosen", "rejected"}, pref.column_names
for row in pref:
    assert row["prompt"][-1]["role"] == "user", row["prompt"]
    for col in ("chosen", "rejected"):
        assert [m["role"] for m in row[col]] == ["assistant"], row[col]
        assert row[col][0]["content"], col
    assert row["chosen"] != row["rejected"]

csv_sft = load_dataset("csv", data_files=f"{run_dir}/sft.csv", split="train")
assert csv_sft.column_names == ["id", "prompt", "completion"], csv_sft.column_names
assert csv_sft.num_rows == expected
csv_pref = load_dataset("csv", data_files=f"{run_dir}/preference.csv", split="train")
assert csv_pref.column_names == ["id", "prompt", "chosen", "rejected"], csv_pref.column_names
# Prompts survive the CSV round trip exactly.
by_id = {r["id"]: r["messages"][-2]["content"] for r in sft}
for r in csv_sft:
    assert by_id[str(r["id"])] == r["prompt"], r["id"]
print(f"datasets: sft {sft.num_rows} rows, preference {pref.num_rows} rows: ok")
