from maeum.dialogue import (
    END_OF_TURN,
    USER_HEADER,
    USER_TAIL,
    build_prompt,
    fit_to_length,
    history_window,
    response_text,
)

HISTORY = [("user", "u1"), ("model", "m1"), ("user", "u2"), ("model", "m2"), ("user", "u3"), ("model", "m3")]


def test_prompt_uses_the_gemma_chat_template():
    prompt = build_prompt([("user", "안녕"), ("model", "반가워 ")], "요즘 너무 지쳐 ", max_history_turns=4)
    assert prompt.text == (
        "<start_of_turn>user\n안녕<end_of_turn>\n"
        "<start_of_turn>model\n반가워<end_of_turn>\n"
        "<start_of_turn>user\n요즘 너무 지쳐<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert response_text("그랬구나 ") == "그랬구나" + END_OF_TURN


def test_history_window_keeps_the_most_recent_turns():
    assert history_window(HISTORY, 4) == HISTORY[-4:]
    assert history_window(HISTORY, 0) == []
    assert len(build_prompt(HISTORY, "now", 4).history_blocks) == 4
    assert build_prompt(HISTORY, "now", 4).history_blocks[0].startswith(USER_HEADER) and "u2" in build_prompt(HISTORY, "now", 4).history_blocks[0]


def ids(n, start):
    return list(range(start, start + n))


def test_fit_keeps_everything_when_it_fits():
    fitted = fit_to_length([2], [ids(5, 100), ids(5, 200)], [4, 5], ids(6, 300), [6, 7], ids(4, 400), 40)
    assert not fitted.truncated
    assert fitted.prompt == [2, *ids(5, 100), *ids(5, 200), 4, 5, *ids(6, 300), 6, 7] and fitted.response == ids(4, 400)


def test_fit_drops_oldest_history_first():
    fitted = fit_to_length([2], [ids(5, 100), ids(5, 200)], [4, 5], ids(6, 300), [6, 7], ids(4, 400), 1 + 2 + 2 + 6 + 4 + 5)
    assert fitted.dropped_history_turns == 1 and fitted.cut_user_tokens == 0
    assert fitted.prompt[1:6] == ids(5, 200) and fitted.response == ids(4, 400)


def test_fit_cuts_the_start_of_the_user_turn_but_keeps_its_end_and_the_response():
    fitted = fit_to_length([2], [ids(5, 100)], [4, 5], ids(10, 300), [6, 7], ids(4, 400), 1 + 2 + 2 + 4 + 4)
    assert fitted.dropped_history_turns == 1 and fitted.cut_user_tokens == 6
    assert fitted.prompt == [2, 4, 5, *ids(4, 306), 6, 7] and fitted.response == ids(4, 400)


def test_fit_cuts_the_response_end_only_when_nothing_else_is_left_and_keeps_the_end_marker():
    response = ids(10, 400) + [99]
    fitted = fit_to_length([2], [], [4, 5], ids(3, 300), [6, 7], response, 1 + 2 + 2 + 5)
    assert fitted.cut_user_tokens == 3 and fitted.cut_response_tokens == 6
    assert fitted.response == ids(4, 400) + [99]
    assert len(fitted.prompt) + len(fitted.response) == 10


def test_user_pieces_compose_the_prompt_text():
    prompt = build_prompt([], "hi", 4)
    assert prompt.text == USER_HEADER + "hi" + USER_TAIL
