"""Load exported tokenizers as their consumers do, in whatever interpreter runs this script; print JSON.

Run by tests/test_tokenizer.py under the suite's own interpreter and under a second one with transformers 4.x
(no torch needed): ``python tokenizer_probe.py TEXT_FILE DIR...``. For each directory it reports what
``AutoTokenizer`` loaded and the ids it gives the text, llama.cpp's pre-tokenizer hash (``convert_hf_to_gguf.py``,
``get_vocab_base_pre``: sha256 of ``str(tokenizer.encode(chktxt))``) and, when the ``gguf`` package is there, what
``gguf.SpecialVocab`` (the converter's reader of merges and special tokens) finds. It imports nothing of hfexport.
"""

from __future__ import annotations

import json
import sys
from hashlib import sha256

# llama.cpp's convert_hf_to_gguf.py, get_vocab_base_pre(): the text whose token ids identify a pre-tokenizer.
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) "
    "😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 "
    "333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= "
    "нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
    "sure I'll make it, 'D you like some tea? We'Ve a'lL"
)


def probe(directory: str, text: str) -> dict[str, object]:
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    try:
        ids = tok(text)["input_ids"]
        chkhsh = sha256(str(tok.encode(CHKTXT)).encode()).hexdigest()
    except Exception:  # a character-level vocabulary cannot encode what it never saw: keep its characters
        vocab = tok.get_vocab()
        text = "".join(c for c in text if c in vocab)
        ids, chkhsh = tok(text)["input_ids"], None
    out: dict[str, object] = {
        "transformers": transformers.__version__,
        "class": type(tok).__name__,
        "len": len(tok),
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id,
        "model_max_length": tok.model_max_length,
        "ids": ids,
        "decoded": tok.decode(ids),
        "chkhsh": chkhsh,
    }
    try:
        import gguf
    except ImportError:
        return out
    special = gguf.SpecialVocab(directory, load_merges=True)
    out["gguf_merges"] = len(special.merges)
    out["gguf_special_ids"] = special.special_token_ids
    return out


def main() -> None:
    with open(sys.argv[1], encoding="utf-8", newline="") as fh:
        text = fh.read()
    print(json.dumps({d: probe(d, text) for d in sys.argv[2:]}))


if __name__ == "__main__":
    main()
