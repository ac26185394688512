"""hfexport.training"""
