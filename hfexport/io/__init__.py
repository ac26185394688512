"""hfexport.io"""
