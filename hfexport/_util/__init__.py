"""hfexport._util"""
