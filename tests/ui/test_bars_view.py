"""Step ④'s probabilities as HTML bars: one row per class, values as text, the prediction marked."""

from __future__ import annotations

import re

import pytest

from ui.bars_view import probabilities_html

NAMES = [str(i) for i in range(10)]


def test_each_class_has_a_row_with_both_values_and_bars_as_wide_as_the_probabilities():
    fhe = [0.02] * 9 + [0.82]
    clear = [0.03] * 9 + [0.73]
    html = probabilities_html(fhe, NAMES, clear)
    rows = re.findall(r"<li(?: class=\"top\")?>(.*?)</li>", html)
    assert len(rows) == 10
    assert '<li class="top"><span class="name">9</span>' in html  # the decrypted prediction
    assert html.count('class="top"') == 1
    assert "82%" in rows[9] and "73%" in rows[9] and "2%" in rows[0] and "3%" in rows[0]
    widths = [float(w) for w in re.findall(r'class="bar fhe" style="width:([\d.]+)%"', html)]
    assert widths == pytest.approx([100 * p for p in fhe])
    assert "clear model" in html
    assert "&lt;1%" in probabilities_html([0.001, 0.999], ["a", "b"])  # not 0 %: it is not nothing


def test_without_the_clear_model_only_the_decrypted_bars_show_and_names_are_escaped():
    html = probabilities_html([0.6, 0.4], ["<b>cat</b>", "dog"])
    assert "clear" not in html
    assert "&lt;b&gt;cat&lt;/b&gt;" in html and "<b>cat</b>" not in html


def test_a_name_missing_for_a_probability_is_refused():
    with pytest.raises(ValueError, match="3 probabilities for 2 class names"):
        probabilities_html([0.2, 0.3, 0.5], ["a", "b"])
    with pytest.raises(ValueError, match="2 clear probabilities for 3 decrypted ones"):
        probabilities_html([0.2, 0.3, 0.5], ["a", "b", "c"], [0.5, 0.5])
