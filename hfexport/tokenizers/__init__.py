"""hfexport.tokenizers"""
