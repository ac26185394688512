"""hfexport.hub"""
