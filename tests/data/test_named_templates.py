"""Chat templates shipped by name (`template: qwen`): each renders its family's format and probes to the family's
end-of-turn token; the shipped files are the licensed sources (TRL unmodified, chujiezheng stripped as its README
says); an unknown name lists the available ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizer_families import family_tokenizer

from sftforge.data.named_templates import NAMED_TEMPLATES, template_names
from sftforge.data.templates import DEFAULT_CHAT_TEMPLATE, TemplateInfo, resolve_chat_template
from sftforge.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "src" / "sftforge" / "data" / "chat_templates"
SHARED_TEMPLATES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "chat_templates"

# name → (the family tokenizer it is written for, the end-of-turn it must probe to, text of a rendered user turn)
EXPECTED = {
    "qwen": ("qwen2.5", "<|im_end|>", "<|im_start|>user\nHi<|im_end|>"),
    "qwen3": ("qwen3", "<|im_end|>", "<|im_start|>user\nHi<|im_end|>"),
    "llama3": ("llama3", "<|eot_id|>", "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"),
    "llama2": ("llama2", "</s>", "[INST] Hi [/INST]"),
    "mistral": ("mistral", "</s>", "[INST] Hi [/INST]"),
    "gemma": ("gemma", "<end_of_turn>", "<start_of_turn>user\nHi<end_of_turn>"),
    "gemma3": ("gemma", "<end_of_turn>", "<start_of_turn>user\nHi<end_of_turn>"),
    "phi": ("phi3", "<|end|>", "<|user|>\nHi<|end|>"),
    "deepseek3": ("deepseekv3", "<｜end▁of▁sentence｜>", "<｜User｜>Hi"),
    "alpaca": ("llama2", "</s>", "### Instruction:\nHi"),
    "vicuna": ("llama2", "</s>", "USER: Hi"),
    "zephyr": ("mistral", "</s>", "<|user|>\nHi</s>"),
}


def test_every_file_has_a_name_and_an_expectation():
    assert {f.name for f in SHIPPED.glob("*.jinja")} == set(NAMED_TEMPLATES.values())
    assert {NAMED_TEMPLATES[n] for n in EXPECTED} == set(NAMED_TEMPLATES.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_template_renders_its_family_format(name):
    family, end_of_turn, user_turn = EXPECTED[name]
    tok = family_tokenizer(family)
    text, source = resolve_chat_template(name, tok)
    assert source == f"{name} (shipped: {NAMED_TEMPLATES[name]})"
    info = TemplateInfo.probe(tok, text)
    assert info.end_of_turn[0] == end_of_turn
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], chat_template=text,
        tokenize=False,
    )  # fmt: skip
    assert user_turn in rendered and "Hello." in rendered


def test_names_are_case_insensitive_and_chatml_is_the_default_template():
    tok = family_tokenizer("chatml")
    assert resolve_chat_template("Qwen", tok)[1] == "Qwen (shipped: qwen2_5.jinja)"
    assert resolve_chat_template("chatml", tok)[0] == DEFAULT_CHAT_TEMPLATE


def test_unknown_name_lists_the_names():
    with pytest.raises(ConfigError) as info:
        resolve_chat_template("llama5", family_tokenizer("chatml"))
    text = str(info.value)
    assert "'llama5' is neither a .jinja file nor a shipped template name" in text
    assert all(name in text for name in template_names())


@pytest.mark.parametrize("file", sorted(set(NAMED_TEMPLATES.values())))
def test_shipped_file_is_its_licensed_source(file):
    if not SHARED_TEMPLATES.is_dir():
        pytest.skip(f"../shared is absent: the source templates are not at {SHARED_TEMPLATES}")
    shipped = (SHIPPED / file).read_text(encoding="utf-8")
    trl = SHARED_TEMPLATES / "trl" / file
    if trl.is_file():  # TRL's, Apache-2.0: unmodified
        assert shipped == trl.read_text(encoding="utf-8")
    else:  # chujiezheng's, MIT: stripped as its README prescribes
        source = (SHARED_TEMPLATES / file).read_text(encoding="utf-8")
        assert shipped == source.replace("    ", "").replace("\n", "")
    assert (SHIPPED / "LICENSE-trl-Apache-2.0").is_file() and (
        SHIPPED / "LICENSE-chujiezheng-chat_templates-MIT"
    ).is_file()
