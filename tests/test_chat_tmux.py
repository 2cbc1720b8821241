"""The chat as a person uses it: `stages/chat.py` in a real terminal (tmux), typed into, read off the screen."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import REPO
from transformers import AutoTokenizer

from langlift import generation as G
from langlift.params import Generation

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
PROMPT = "Azərbaycanın paytaxtı haradır?"


@pytest.fixture
def chat_model(tmp_path, tiny_llama_dir) -> Path:
    """A tiny fully fine-tuned model folder as finetune writes it: weights, tokenizer, langlift.json and
    generation_config.json (sampling, at most 12 new tokens)."""
    folder = tmp_path / "finetuned"
    shutil.copytree(tiny_llama_dir, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    G.save(folder, Generation(max_new_tokens=12), tok, 256)
    (folder / "langlift.json").write_text(json.dumps({"base_model": str(tiny_llama_dir), "method": "full",
                                                      "generation_seed": 3}))
    return folder


class Terminal:
    """One tmux session on a private server (its own socket): type, read the screen, wait for text."""

    def __init__(self, command: str):
        self.socket = f"langlift-test-{uuid.uuid4().hex[:8]}"
        self._tmux("new-session", "-d", "-x", "200", "-y", "50", "-s", "chat", command)

    def _tmux(self, *args: str) -> str:
        return subprocess.run([TMUX, "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", "chat", "-l", text)
        self._tmux("send-keys", "-t", "chat", "Enter")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "chat", "-S", "-200")

    def wait_for(self, done, timeout: float = 60) -> str:
        """The screen once ``done(screen)`` holds (polled), or fail with what the screen showed."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            screen = self.screen()
            if done(screen):
                return screen
            time.sleep(0.2)
        pytest.fail(f"timed out waiting; the screen was:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run([TMUX, "-L", self.socket, "kill-server"], capture_output=True)


def _markers(screen: str) -> int:
    return sum(line.startswith("> ") or line == ">" for line in screen.splitlines())


def _answers(screen: str) -> list[str]:
    """The lines printed right after each typed prompt (the streamed answers)."""
    lines = screen.splitlines()
    return [lines[i + 1] for i, line in enumerate(lines[:-1]) if line == f"> {PROMPT}"]


def test_a_person_chats_resets_and_exits_in_a_terminal(chat_model):
    env = {k: os.environ[k] for k in ("PATH", "HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if k in os.environ}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    command = (f"cd {shlex.quote(str(REPO))} && env {exports} {shlex.quote(sys.executable)} stages/chat.py "
               f"--model {shlex.quote(str(chat_model))} --device cpu; echo CHAT-EXITED-$?; sleep 60")
    term = Terminal(command)
    try:
        screen = term.wait_for(lambda s: _markers(s) == 1)
        assert "/reset forgets the conversation, /exit or Ctrl-D quits" in screen
        assert "sampling (temperature 0.7, top_p 0.95, top_k 50)" in screen and "at most 12 new tokens" in screen

        term.type(PROMPT)  # first turn: an answer streams in, then the next prompt marker
        screen = term.wait_for(lambda s: _markers(s) == 2)
        first = _answers(screen)
        assert len(first) == 1 and first[0].strip() and not first[0].startswith(">")

        term.type("Bəs Gəncə?")  # a second turn, on top of the first
        term.wait_for(lambda s: _markers(s) == 3)

        term.type("/reset")  # forget the conversation: the same question gets the same answer again
        screen = term.wait_for(lambda s: "(conversation reset)" in s and _markers(s) == 4)
        term.type(PROMPT)
        screen = term.wait_for(lambda s: _markers(s) == 5)
        assert _answers(screen) == [first[0], first[0]]

        term.type("/exit")
        screen = term.wait_for(lambda s: "CHAT-EXITED-" in s, timeout=20)
        assert "CHAT-EXITED-0" in screen
        assert "Warning" not in screen and "warn" not in screen.lower(), screen
    finally:
        term.close()
