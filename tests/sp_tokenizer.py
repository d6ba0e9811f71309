"""A Llama-2-style tokenizer built offline: SentencePiece's layout as Llama-2's ``tokenizer.json`` has it
(a "▁" prepended to the text, spaces written as "▁", BPE with byte fallback, ``<s>`` in front), over
a small vocabulary. Like Llama-2's, it tokenises ``" Paris"`` as ``<s>``, a lone ``▁`` and ``▁Paris``."""

WORDS = ("LeBron James plays the sport of football The mother tongue Danielle Darrieux is English language "
         "Toyota whose headquarters are in Berlin weather was cold Because this a").split()


def llama2_style_tokenizer(words=WORDS):
    """The tokenizer, every word of ``words`` one ``▁word`` piece, any other text in characters or bytes."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ["▁", *map(chr, range(33, 127))]:
        vocab.setdefault(piece, len(vocab))
    merges = []
    for word in words:  # "▁" + "L" → "▁L", "▁L" + "e" → "▁Le", ...: each word one piece
        piece = "▁"
        for c in word:
            if (piece, c) not in merges:
                merges.append((piece, c))
            piece += c
            vocab.setdefault(piece, len(vocab))
    t = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.pad_token = tok.eos_token
    return tok
