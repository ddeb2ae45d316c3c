"""common.data"""
