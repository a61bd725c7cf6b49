"""text: word vectors, tokenisation and ASR captions (AVLnet-Text, extensions.md §1)"""
