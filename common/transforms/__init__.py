"""common.transforms"""
