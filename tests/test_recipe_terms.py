"""LIFT synthetic question–answer pairs on the tiny tokenizer: parsing, dedupe, the QA batch, the chat format."""

from __future__ import annotations

from templora_memory.synthetic import QAPair, QuestionWriter, parse_pair, qa_batch, unique_pairs
from templora_memory.trainer import IGNORE_INDEX
from templora_memory.window import ChatRenderer

CAT_PAIR = " What is the cat called?\nAnswer: Whiskers\nQuestion: and then"  # as if sampled after "Question:"
SYSTEM = {"role": "system", "content": "You are the innkeeper."}


def test_pairs_are_parsed_from_the_continuation_of_question():
    assert parse_pair(CAT_PAIR) == QAPair("What is the cat called?", "Whiskers")
    assert parse_pair(" Who sells swords?\nAnswer: The blacksmith") == QAPair("Who sells swords?", "The blacksmith")
    assert parse_pair(" Who sells swords?\n\nAnswer:  Tom \n") == QAPair("Who sells swords?", "Tom")
    assert parse_pair(" Who sells swords?\nThe blacksmith does.") is None  # no answer
    assert parse_pair(" Who sells swords?\nAnswer:   \nmore") is None  # empty answer
    assert parse_pair("\nAnswer: Tom") is None  # no question
    assert parse_pair("") is None


def test_malformed_and_repeated_pairs_are_dropped():
    cat, smith = QAPair("What is the cat called?", "Whiskers"), QAPair("Who sells swords?", "The blacksmith")
    again = QAPair("what is the  cat called? ", "Tom")
    assert unique_pairs([cat, None, again, smith, cat]) == [cat, smith]


def test_the_qa_batch_scores_answer_tokens_only():
    batch = qa_batch([([1, 2, 3], [4, 5]), ([6], [7])])
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]
    assert batch.labels.tolist() == [[IGNORE_INDEX] * 3 + [4, 5], [IGNORE_INDEX, 7] + [IGNORE_INDEX] * 3]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]


def test_a_pair_is_rendered_in_the_agents_chat_format(tokenizer):
    writer = QuestionWriter(tokenizer, ChatRenderer(tokenizer), eos_ids=set(), count=1)
    batch = writer.batch([SYSTEM], [QAPair("What is the cat called?", "Whiskers")])
    scored = batch.labels[0] != IGNORE_INDEX
    assert tokenizer.decode(batch.input_ids[0][~scored]) == (
        "<|im_start|>system\nYou are the innkeeper.<|im_end|>\n"
        "<|im_start|>user\nWhat is the cat called?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.decode(batch.input_ids[0][scored]) == "Whiskers<|im_end|>\n"
