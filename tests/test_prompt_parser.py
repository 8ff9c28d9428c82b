"""The prompt language: emphasis, schedules, AND, extra-network tags, comments.

Expected values come from A1111's documented examples (facts) or are derived by hand
from the rules in docs/a1111-semantics.md, "Prompt syntax"; the derivation is written beside each
case.
"""

import pytest

from modules.conditioning.prompt_parser import (
    extract_extra_networks,
    get_learned_conditioning_prompt_schedules,
    get_multicond_prompt_list,
    parse_prompt_attention,
    split_and_weights,
    strip_comments,
)


@pytest.mark.parametrize("text, expected", [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1],
      ["hill", 0.55], [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
    ("", [["", 1.0]]),
    # [x] divides by 1.1; (x: 2 ) tolerates spaces around the number.
    ("[low] (high: 2 )", [["low", 1 / 1.1], [" ", 1.0], ["high", 2.0]]),
    # An unmatched closer and a weight without an open bracket are literal text.
    ("a) b] :1.2)", [["a) b] :1.2)", 1.0]]),
    # A weight without its closing bracket is text; the open "(" then applies to the end.
    ("(a:1.5", [["a:1.5", 1.1]]),
    # A lone backslash disappears; an escaped backslash stays.
    ("\\x \\\\", [["x \\", 1.0]]),
    ("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
    ("aBREAK b", [["aBREAK b", 1.0]]),
    # A BREAK inside brackets gets multiplied like any segment (A1111 quirk kept).
    ("(x BREAK y)", [["x", 1.1], ["BREAK", -1.1], ["y", 1.1]]),
])
def test_parse_prompt_attention(text, expected):
    assert parse_prompt_attention(text) == expected


def schedule(prompt, steps=10, hires=None, old=False):
    return get_learned_conditioning_prompt_schedules([prompt], steps, hires, old)[0]


def test_schedule_plain_and_absolute_steps():
    assert schedule("test") == [[10, "test"]]
    assert schedule("a [b:3]") == [[3, "a "], [10, "a b"]]
    assert schedule("a [b: 3]") == [[3, "a "], [10, "a b"]]
    # Emphasis inside a schedule is kept verbatim for the attention parser.
    assert schedule("a [[[b]]:2]") == [[2, "a "], [10, "a [[b]]"]]
    assert schedule("[(a:2):3]") == [[3, ""], [10, "(a:2)"]]
    assert schedule("a [b : c : 1] d") == [[1, "a b  d"], [10, "a  c  d"]]
    # Outer switches after 1, inner after 2.
    assert schedule("a[b:[c:d:2]:1]e") == [[1, "abe"], [2, "ace"], [10, "ade"]]
    # `when` beyond the steps is capped at the last step.
    assert schedule("[a:b:50]") == [[10, "a"]]


def test_schedule_fantasy_landscape():
    # when: 0.25*10=2.5 -> 2; 0.75*10=7.5 -> 7; 0.6*10 -> 6; 0.25 -> 2; 0.5 -> 5.
    # Boundaries {2, 5, 6, 7, 10}; "from" is shown while step <= when.
    prompt = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
              "[ in foreground::0.6][: in background:0.25] [shoddy:masterful:0.5]")
    assert schedule(prompt) == [
        [2, "fantasy landscape with a mountain and an oak in foreground shoddy"],
        [5, "fantasy landscape with a lake and an oak in foreground in background shoddy"],
        [6, "fantasy landscape with a lake and an oak in foreground in background masterful"],
        [7, "fantasy landscape with a lake and an oak in background masterful"],
        [10, "fantasy landscape with a lake and a christmas tree in background masterful"],
    ]


def test_schedule_fractions_hires_and_old_scheduling():
    # First pass, 10 steps: 0.5 -> step 5.
    assert schedule("a [b:.5] c") == [[5, "a  c"], [10, "a b c"]]
    # Hires pass (20 steps): floats are offset by 1.0: (0.5 - 1) * 20 = -10 < 1, so the
    # switch already happened and the hires pass sees "b" throughout.
    assert schedule("a [b:.5] c", 10, 20) == [[20, "a b c"]]
    # (1.5 - 1) * 20 = 10: the switch is half way through the hires pass.
    assert schedule("a [b:1.5] c", 10, 20) == [[10, "a  c"], [20, "a b c"]]
    # Integers are offset by the base steps: 15 - 10 = 5; 3 - 10 < 1.
    assert schedule("a [b:15] c", 10, 20) == [[5, "a  c"], [20, "a b c"]]
    assert schedule("a [b:3] c", 10, 20) == [[20, "a b c"]]
    # "1.0" is a fraction in new scheduling (whole run) but step 1 in old scheduling.
    assert schedule("a [b:1.0] c") == [[10, "a  c"]]
    assert schedule("a [b:1.0] c", old=True) == [[1, "a  c"], [10, "a b c"]]
    # Old scheduling ignores hires offsets and uses the base steps.
    assert schedule("a [b:.5] c", 10, 20, old=True) == [[5, "a  c"], [10, "a b c"]]


def test_alternation():
    female, male = "female", "male"
    assert schedule("[fe|]male") == [[s, female if s % 2 else male] for s in range(1, 11)]
    assert schedule("[fe|||]male") == [[s, female if s % 4 == 1 else male] for s in range(1, 11)]
    assert schedule("[a|b|c]", 4) == [[1, "a"], [2, "b"], [3, "c"], [4, "a"]]
    assert schedule("[a|(b:1.1)]", 3) == [[1, "a"], [2, "(b:1.1)"], [3, "a"]]
    # Alternation inside a schedule: steps 1..2 alternate, then "c".
    assert schedule("[[a|b]:c:2]", 4) == [[1, "a"], [2, "b"], [3, "c"], [4, "c"]]


def test_unparseable_prompts_are_verbatim():
    assert schedule("a [unbalanced") == [[10, "a [unbalanced"]]
    assert schedule("((a][:b:c [d:3]") == [[3, "((a][:b:c "], [10, "((a][:b:c d"]]
    # "|" outside [...] and a dangling backslash have no parse: nothing is scheduled.
    assert schedule("a|b [c:2]") == [[10, "a|b [c:2]"]]
    assert schedule("[a|b] \\") == [[10, "[a|b] \\"]]
    # Escaped brackets are plain text and keep their backslash.
    assert schedule("\\[a\\] [b:2]") == [[2, "\\[a\\] "], [10, "\\[a\\] b"]]


def test_schedules_for_a_batch_keep_order_and_duplicates():
    result = get_learned_conditioning_prompt_schedules(["x", "[y:2]", "x"], 4)
    assert result == [[[4, "x"]], [[2, ""], [4, "y"]], [[4, "x"]]]


def test_and_split_and_multicond_list():
    assert split_and_weights("a cat :1.2 AND a dog:0.5") == [("a cat", 1.2), (" a dog", 0.5)]
    assert split_and_weights("ANDROID AND x:-1") == [("ANDROID", 1.0), (" x", -1.0)]
    res_indexes, flat, indexes = get_multicond_prompt_list(
        ["a cat :1.2 AND a dog:0.5", "a cat AND a bird"])
    assert flat == ["a cat", " a dog", " a bird"]
    assert res_indexes == [[(0, 1.2), (1, 0.5)], [(0, 1.0), (2, 1.0)]]
    assert indexes == {"a cat": 0, " a dog": 1, " a bird": 2}


def test_extra_network_tags():
    text, tags = extract_extra_networks(
        "a <lora:foo:0.8> b <hypernet:bar><lora:baz:te=0.5:unet=1:x=y=z> c")
    assert text == "a  b  c"
    assert [(t.name, t.positional, t.named) for t in tags] == [
        ("lora", ("foo", "0.8"), {}),
        ("hypernet", ("bar",), {}),
        ("lora", ("baz", "x=y=z"), {"te": "0.5", "unet": "1"}),
    ]
    assert tags[2].items == ["baz", "x=y=z", "te=0.5", "unet=1"]
    # No name or no argument: not a tag.
    assert extract_extra_networks("<lora> <:x>") == ("<lora> <:x>", [])


def test_strip_comments():
    assert strip_comments("a\n# whole line\nb # inline\nc") == "a\nb \nc"
    assert strip_comments("# first\nx") == "\nx"
    assert strip_comments("no comments") == "no comments"
