"""common.metrics"""
