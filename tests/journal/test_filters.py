from palyra.journal.filters import where


def test_where_without_filters_is_empty() -> None:
    assert where({"a": None}, {"b": []}) == ("", [])


def test_where_joins_given_filters_in_order() -> None:
    assert where({"a": 1, "b": None, "c": "x"}, {"d": ["p", "q"], "e": ()}) == (
        "WHERE a = ? AND c = ? AND d IN (?,?)",
        [1, "x", "p", "q"],
    )
