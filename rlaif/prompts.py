"""Prompt texts, versioned: a prompt change changes `PROMPT_VERSION`, which is stored next to every output it made.

The judge follows LLaVA-Hound-DPO's shape (a detailed caption stands in for the video; the judge scores a candidate
answer 1–5 against it, with a short explanation) and VLM-RLAIF's context-aware judging (the caption is the context
of the reward, not the judge's own guess about the video).
"""
from __future__ import annotations

PROMPT_VERSION = "v3"

CAPTION_REQUEST = (
    "Describe this video in detail: the background, every object with its shape and colour, how many of each "
    "there are, and how each one moves."
)

QUESTION_FROM_CAPTION = (
    "Here is a detailed description of a video:\n{caption}\n\n"
    "Write one short question about the video that the description answers, then its answer.\n"
    "Reply exactly as:\nQuestion: <question>\nAnswer: <answer>"
)

JUDGE_SYSTEM = (
    "You evaluate answers to questions about a video. You cannot see the video; a detailed description of it is "
    "your evidence. Judge only against that evidence."
)

# The instructions come before the evidence, in the system message (LLaVA-Hound's judge has them there too): every
# judging prompt then starts with the same tokens, and the answers to one question share everything up to the
# candidate, so the judge engine's prefix cache computes them once (the judge's prompt is most of its work).
JUDGE_INSTRUCTIONS = (
    "Rate the candidate answer from 1 to 5 for factual consistency with the description, relevance, accuracy, "
    "clarity and completeness: 1 = wrong or unrelated, 3 = partly correct, 5 = fully correct and consistent with "
    "the description. Reply with one short sentence of explanation, then a last line \"Score: N\"."
)

JUDGE_REQUEST = (
    "Video description (evidence):\n{caption}\n\n"
    "Question: {question}\n"
    "{reference}"
    "Candidate answer: {answer}"
)


def judge_output_regex(max_tokens: int) -> str:
    """vLLM structured outputs constrain the judge to this shape, so a score always parses (rlaif.judging still
    checks). The explanation is bounded so that the score fits in `max_tokens` even at one token per character."""
    return rf"Explanation: [^\n]{{1,{max(1, max_tokens - 8)}}}\nScore: [1-5]"


# VLM-RLAIF's context-aware judge: the caption is the context, four aspects are rated separately (their mean is the score).
ASPECT_JUDGE_INSTRUCTIONS = (
    "Rate the candidate answer from 1 to 5 on each aspect, judging only against the description:\n"
    "Accurate: consistent with the description, nothing invented.\n"
    "Helpful: answers what was asked.\n"
    "Natural: fluent, reads like a person wrote it.\n"
    "Concise: no padding or repetition.\n"
    "Reply with one short sentence of explanation, then four lines \"Accurate: N\", \"Helpful: N\", "
    "\"Natural: N\", \"Concise: N\"."
)


def aspect_output_regex(max_tokens: int) -> str:
    return (rf"Explanation: [^\n]{{1,{max(1, max_tokens - 24)}}}\n"
            r"Accurate: [1-5]\nHelpful: [1-5]\nNatural: [1-5]\nConcise: [1-5]")


def judge_messages(caption: str, question: str, answer: str, reference: str | None = None,
                   aspects: bool = False) -> list[dict]:
    ref = f"Reference answer: {reference}\n" if reference else ""
    instructions = ASPECT_JUDGE_INSTRUCTIONS if aspects else JUDGE_INSTRUCTIONS
    return [
        {"role": "system", "content": f"{JUDGE_SYSTEM}\n\n{instructions}"},
        {"role": "user", "content": JUDGE_REQUEST.format(caption=caption, question=question, reference=ref, answer=answer)},
    ]


# i-SRT's self-retrospection: the policy improves its own previous description while looking at the video again.
RETROSPECT_REQUEST = (
    "Here is a description of this video written earlier:\n{previous}\n\n"
    "Watch the video again and write an improved detailed description: correct what is wrong, add what is "
    "missing, and leave out anything that cannot be seen."
)


def retrospect_messages(previous: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video"},
                                         {"type": "text", "text": RETROSPECT_REQUEST.format(previous=previous)}]}]


def caption_messages() -> list[dict]:
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": CAPTION_REQUEST}]}]


# video-SALMONN 2's caption evaluation: each fact of the reference caption is checked against the model's caption.
FACT_VERDICTS = ("covered", "missing", "contradicted")
FACT_CHECK_REQUEST = (
    "Description of a video written by a model:\n{caption}\n\n"
    "Fact about the video: {fact}\n\n"
    "Does the description state this fact (covered), not mention it (missing), or state something that conflicts "
    "with it (contradicted)? Reply exactly as \"Verdict: covered\", \"Verdict: missing\" or \"Verdict: contradicted\"."
)
FACT_CHECK_SYSTEM = "You check descriptions of videos against facts known to be true about the video."
FACT_CHECK_REGEX = r"Verdict: (covered|missing|contradicted)"


def fact_check_messages(caption: str, fact: str) -> list[dict]:
    return [{"role": "system", "content": FACT_CHECK_SYSTEM},
            {"role": "user", "content": FACT_CHECK_REQUEST.format(caption=caption, fact=fact)}]


def video_question_messages(question: str) -> list[dict]:
    """The policy's view: the video, then the question (Qwen2-VL chat format)."""
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]


def question_messages(caption: str) -> list[dict]:
    return [{"role": "user", "content": QUESTION_FROM_CAPTION.format(caption=caption)}]
