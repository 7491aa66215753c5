"""Write the bundled demo sources (our own text, deterministic) into demo/data/.

The demo exercises every stage: exact and near duplicates, repeated paragraphs, HTML residue,
fake PII and secrets, low-quality rows, several licences including a non-commercial one, SFT,
multi-turn chat and preference rows, a prompt-only benchmark that one training row leaks, and a
handful of malformed records for the quarantine. Run ``python -m demo.make_demo_data``.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
TOKENIZER = Path(__file__).resolve().parent / "tokenizer"

CONCEPTS: dict[str, str] = {
    "photosynthesis": "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide "
    "to make glucose and release oxygen. It happens mainly in the chloroplasts of leaf cells.",
    "a hash table": "A hash table stores key-value pairs in an array of buckets. A hash function maps each key to "
    "a bucket, so lookups, inserts and deletes take constant time on average.",
    "inflation": "Inflation is the rate at which the general level of prices rises over time. When inflation is "
    "high, each unit of money buys fewer goods and services than before.",
    "the water cycle": "The water cycle describes how water evaporates from oceans and lakes, condenses into "
    "clouds, falls as precipitation and flows back to the sea through rivers and groundwater.",
    "a binary search": "Binary search finds an item in a sorted list by repeatedly halving the search interval. "
    "It compares the target with the middle element and discards the half that cannot contain it.",
    "compound interest": "Compound interest is interest calculated on the initial principal and on the interest "
    "already earned. Over many periods it makes savings grow faster than simple interest.",
    "plate tectonics": "Plate tectonics is the theory that the outer shell of the Earth is divided into large "
    "plates that slowly move over the mantle, causing earthquakes, volcanoes and mountain ranges.",
    "a neural network": "A neural network is a model made of layers of simple units. Each unit computes a weighted "
    "sum of its inputs and applies a non-linear function; training adjusts the weights to reduce error.",
    "supply and demand": "Supply and demand is the economic model in which the price of a good settles where the "
    "quantity buyers want equals the quantity sellers offer.",
    "recursion": "Recursion is a technique where a function calls itself on a smaller part of the problem until "
    "it reaches a base case that can be answered directly.",
    "the greenhouse effect": "The greenhouse effect is the warming of a planet's surface because gases such as "
    "carbon dioxide and water vapour absorb heat radiated by the ground and send part of it back down.",
    "version control": "Version control records changes to files over time so that you can recall specific "
    "versions later, compare changes, and let several people work on the same project safely.",
    "an API": "An API, or application programming interface, is a defined set of requests and responses that "
    "lets one program use the services of another without knowing how it is built inside.",
    "vaccination": "Vaccination trains the immune system by exposing it to a harmless piece or weakened form of a "
    "pathogen, so the body can respond quickly if it meets the real infection later.",
    "opportunity cost": "Opportunity cost is the value of the best alternative you give up when you make a choice. "
    "Spending an evening studying has the opportunity cost of the rest you did not get.",
    "a linked list": "A linked list is a sequence of nodes where each node holds a value and a reference to the "
    "next node. Inserting in the middle is cheap, but finding the n-th element takes linear time.",
    "gravity": "Gravity is the force by which masses attract one another. On Earth it gives objects weight and "
    "makes them fall towards the ground at about 9.8 metres per second squared.",
    "encryption": "Encryption turns readable data into ciphertext with a key, so that only someone holding the "
    "right key can turn it back into the original message.",
}

STYLES = [
    "Explain what {c} is.",
    "Describe {c} in simple terms.",
    "What is {c}? Answer briefly.",
    "Give a short explanation of {c} for a high-school student.",
]

CHAT_TOPICS = [
    (
        "I want to start running. How should I begin?",
        "Start with short sessions of alternating walking and running, three times a week. Increase the running "
        "part gradually and rest between sessions so your joints can adapt.",
        "How long until I can run five kilometres?",
        "Most beginners can run five kilometres without stopping after eight to ten weeks of steady practice, "
        "if they train three times a week and increase distance by about ten percent each week.",
    ),
    (
        "Can you help me plan a vegetable garden?",
        "Of course. Choose a sunny spot with at least six hours of light, prepare the soil with compost, and start "
        "with easy crops such as lettuce, beans, tomatoes and courgettes.",
        "What should I plant first in spring?",
        "Plant cool-season crops such as peas, spinach and radishes first; they tolerate light frost. Wait until "
        "the soil is warm before planting tomatoes and peppers.",
    ),
    (
        "What is a good way to learn a new language?",
        "Combine daily short practice with real use: learn the most common words first, listen to native speakers, "
        "and speak from the first week, even if you make mistakes.",
        "How many words do I need for basic conversation?",
        "Around one thousand of the most frequent words cover most everyday conversation. With two to three "
        "thousand words you can follow many simple texts and talks.",
    ),
    (
        "How do I make my Python code faster?",
        "First measure with a profiler to find where time goes. Then use better algorithms and data structures, "
        "avoid repeated work inside loops, and move heavy numeric work to libraries such as NumPy.",
        "Is it worth rewriting it in C?",
        "Only for the small part that dominates the run time, and only after simpler fixes. Tools such as Cython "
        "or a compiled extension keep most of the code in Python.",
    ),
    (
        "I keep forgetting what I read. Any advice?",
        "Take brief notes in your own words, stop after each chapter to recall the main points without looking, "
        "and review your notes after a day and again after a week.",
        "Does highlighting help?",
        "Highlighting alone helps little because it is passive. It works better when you later turn the highlighted "
        "parts into questions and test yourself on them.",
    ),
    (
        "How should I prepare for a job interview?",
        "Research the company, practise answering common questions aloud, prepare two or three stories that show "
        "your skills, and have a few thoughtful questions ready for the interviewer.",
        "What if I do not know an answer?",
        "Say so honestly, explain how you would find the answer, and relate it to something you do know. "
        "Interviewers value clear thinking more than a perfect recall of facts.",
    ),
]


def _alpaca_rows(rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for concept, answer in CONCEPTS.items():
        style = rng.choice(STYLES)
        rows.append({"instruction": style.format(c=concept), "input": "", "output": answer})
    for _ in range(12):
        a, b = rng.randint(12, 99), rng.randint(12, 99)
        rows.append(
            {
                "instruction": "Multiply the two numbers and show the result.",
                "input": f"{a} and {b}",
                "output": f"{a} multiplied by {b} equals {a * b}. You can check it by computing "
                f"{a} times {b // 10 * 10} plus {a} times {b % 10}.",
            }
        )
    return rows


def write_alpaca(rng: random.Random) -> None:
    """SFT source (Apache-2.0) with duplicates, residue, PII, low-quality and malformed records."""
    rows = _alpaca_rows(rng)
    extra = [
        # exact duplicate (same record twice)
        rows[0],
        # near duplicate: the same question, the answer with one more sentence (word 5-gram Jaccard ~0.85)
        {
            "instruction": rows[1]["instruction"],
            "input": "",
            "output": rows[1]["output"] + " That is the short version.",
        },
        # HTML residue from a scraped answer
        {
            "instruction": "What does HTTP status 404 mean?",
            "input": "",
            "output": "<p>The <b>404 Not Found</b> status means the server could not find the requested page.</p>"
            "<br/><p>It usually means a broken link or a mistyped address.</p>",
        },
        # legitimate HTML inside a code answer (must be kept intact)
        {
            "instruction": "Write a minimal HTML page with a heading.",
            "input": "",
            "output": "```html\n<!DOCTYPE html>\n<html>\n  <body>\n    <h1>Hello</h1>\n  </body>\n</html>\n```",
        },
        # fake PII and secrets
        {
            "instruction": "Draft a short reply to a customer asking for a refund.",
            "input": "",
            "output": "Dear Ms. Rivera, your refund has been approved. If you have questions, write to "
            "maria.rivera@rivera-family.net or call +1 415 555 0134. Best regards, Support.",
        },
        {
            "instruction": "How do I configure the AWS CLI?",
            "input": "",
            "output": "Run aws configure and enter your keys, for example AKIAIOSFODNN7EXAMPLE as the access key id "
            "and your secret key. Never commit these keys to a repository.",
        },
        {
            "instruction": "Store this card for the booking.",
            "input": "Card 4111 1111 1111 1111, exp 12/29",
            "output": "I have noted the card ending in 1111 for the booking. It will be charged on arrival.",
        },
        # low quality: refusal boilerplate, empty answer, too short, echo
        {
            "instruction": "Tell me about the history of the printing press.",
            "input": "",
            "output": "As an AI language model, I cannot provide opinions or browse the internet.",
        },
        {"instruction": "List three primary colours.", "input": "", "output": ""},
        {"instruction": "Hi", "input": "", "output": "Hi"},
        {
            "instruction": "Summarise the water cycle in one sentence.",
            "input": "",
            "output": "Summarise the water cycle in one sentence.",
        },
        # repeated paragraph inside one document
        {
            "instruction": "Give two tips for writing clear emails.",
            "input": "",
            "output": "Keep the subject line specific so the reader knows what the email is about.\n\n"
            "Put the request in the first paragraph and the details after it.\n\n"
            "Keep the subject line specific so the reader knows what the email is about.",
        },
        # leaks a benchmark item verbatim (decontamination)
        {
            "instruction": "Compose a short poem about the ocean at night that mentions the moon and the tide.",
            "input": "",
            "output": "Silver moon on quiet water, / the tide breathes in and slowly out; / "
            "night keeps the shore in gentle order, / and stars drift where the waves turn about.",
        },
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows + extra]
    malformed = [
        '{"instruction": "Name the largest planet.", "input": "", "output": "Jupiter is the larg',  # truncated
        '{"instruction": "What is 2+2?", "input": "", "output": 4}',  # wrong type
        '{"instruction": "Translate hello to French."}',  # missing output
        '{"instruction": "", "input": "", "output": ""}',  # empty content
        "[1, 2, 3]",  # not an object
    ]
    with (DATA / "alpaca_sft.jsonl").open("wb") as handle:
        for line in lines[:10]:
            handle.write(line.encode() + b"\n")
        for line in malformed:
            handle.write(line.encode() + b"\n")
        # undecodable bytes: Latin-1 text in a UTF-8 file
        handle.write(b'{"instruction": "Define caf\xe9.", "input": "", "output": "A small restaurant."}\n')
        # oversized record (over the demo's ingest.max_record_bytes)
        handle.write(
            json.dumps({"instruction": "Repeat after me.", "input": "", "output": "blah " * 6000}).encode() + b"\n"
        )
        for line in lines[10:]:
            handle.write(line.encode() + b"\n")


def write_chat() -> None:
    """Multi-turn chat (CC-BY-4.0) in the ShareGPT layout, with one exact duplicate conversation."""
    conversations = []
    for index, (q1, a1, q2, a2) in enumerate(CHAT_TOPICS):
        conversations.append(
            {
                "id": f"demo_chat_{index}",
                "conversations": [
                    {"from": "human", "value": q1},
                    {"from": "gpt", "value": a1},
                    {"from": "human", "value": q2},
                    {"from": "gpt", "value": a2},
                ],
            }
        )
    conversations.append(dict(conversations[2], id="demo_chat_copy"))
    conversations.append({"id": "demo_chat_bad_role", "conversations": [{"from": "narrator", "value": "Once..."}]})
    (DATA / "chat_sharegpt.json").write_text(json.dumps(conversations, indent=1, ensure_ascii=False))


def write_preference() -> None:
    """Preference pairs (MIT), including one where chosen == rejected."""
    rows = []
    for concept, answer in list(CONCEPTS.items())[:10]:
        rows.append(
            {
                "prompt": f"Explain {concept} to a colleague.",
                "chosen": answer,
                "rejected": f"{concept.capitalize()} is complicated, look it up yourself.",
            }
        )
    rows.append(
        {
            "prompt": "What is the boiling point of water at sea level?",
            "chosen": "Water boils at 100 degrees Celsius at sea level.",
            "rejected": "Water boils at 100 degrees Celsius at sea level.",
        }
    )
    with (DATA / "preference.jsonl").open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def write_noncommercial_csv() -> None:
    """A CSV source under a non-commercial licence (CC-BY-NC-4.0): excluded from commercial builds."""
    rows = [
        ("How many days are in a leap year?", "A leap year has 366 days; the extra day is 29 February."),
        ("What is the capital of Canada?", "The capital of Canada is Ottawa, in the province of Ontario."),
        (
            "Why is the sky blue?",
            "Air molecules scatter short blue wavelengths of sunlight more than red ones, "
            "so scattered blue light reaches our eyes from every direction of the sky.",
        ),
        ("Explain what a hash table is.", CONCEPTS["a hash table"]),  # cross-source duplicate content
        (
            "Give an example of a renewable energy source.",
            "Wind power is renewable: turbines turn moving air into electricity without using up a fuel.",
        ),
    ]
    with (DATA / "qa_noncommercial.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "answer", "annotator"])
        for index, (question, answer) in enumerate(rows):
            writer.writerow([question, answer, f"annotator_{index % 2 + 1}"])


def write_benchmark() -> None:
    """A tiny prompt-only benchmark the pipeline decontaminates against."""
    items = [
        {
            "question_id": 1,
            "turns": ["Compose a short poem about the ocean at night that mentions the moon and the tide."],
        },
        {"question_id": 2, "turns": ["Explain the difference between weather and climate to a child."]},
        {"question_id": 3, "turns": ["Write a function that returns the n-th Fibonacci number."]},
    ]
    with (DATA / "benchmark_questions.jsonl").open("w") as handle:
        for item in items:
            handle.write(json.dumps(item) + "\n")


def write_tokenizer() -> None:
    """A small byte-level BPE trained on the demo text, with a ChatML template that marks assistant
    turns for loss masks: the demo's stand-in for a target model's tokenizer (nothing downloaded)."""
    from curation.format.tokenizers import train_tokenizer

    texts: list[str] = []
    for path in sorted(DATA.iterdir()):
        texts.extend(path.read_text(encoding="utf-8", errors="replace").splitlines())
    train_tokenizer(texts, TOKENIZER, vocab_size=1500, template="chatml_generation")


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    write_alpaca(rng)
    write_chat()
    write_preference()
    write_noncommercial_csv()
    write_benchmark()
    write_tokenizer()
    print(f"demo data and tokenizer written to {DATA.parent}")


if __name__ == "__main__":
    main()
